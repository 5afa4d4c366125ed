"""The fused KD path's view of a model: its final hidden states and its output layer, never its logits.

On the fused path (``kd_path``, default ``auto``: fused wherever it applies) the teacher runs under
``no_grad`` and keeps only its last hidden states ``[B, T, H]``; the student's forward stops before
its lm head too, and the KD term (:func:`kdlens.teacher.fused_kd_token_loss`) runs over the two
heads a chunk of tokens at a time. This module gives the pieces and decides where the path applies:

* :func:`final_hidden` — a forward pass that returns the hidden states the lm head would read (the
  decoder's ``last_hidden_state``, after the final norm), with ``logits_to_keep`` set so that the
  head computes no logits (or only the last few);
* :func:`output_head` — the model's ``kdlens.losses._fused.LMHead``: weight, bias, the common
  vocabulary width (padding rows cut) and Gemma's final logit soft-capping;
* :func:`resolve_kd_path` — fused or plain, and why, recorded in the run manifest. A model is used on
  the fused path only when its own logits on a few positions equal ``LMHead.logits`` of the captured
  hidden states: a head that is not a plain ``nn.Linear`` (a LoRA adapter on ``lm_head``, a quantized
  layer), a forward without ``logits_to_keep``, or an unknown logit transform (a logit scale) falls
  back to the plain path, named.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from kdlens.losses._fused import LMHead, auto_chunk_rows

__all__ = ["final_hidden", "output_head", "head_problem", "kd_path_problem", "resolve_kd_path", "KD_PATHS"]

#: accepted values of the ``kd_path`` config key
KD_PATHS = ("auto", "fused", "plain")
#: positions whose logits the head check compares, and how close they must be (float32 rounding of
#: the same product; bf16 weights are compared in float32 too)
_CHECK_POSITIONS = 4
_CHECK_TOLERANCE = 1e-4


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel (or similar ``.module``) wrapper; PEFT models stay."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def final_hidden(model: torch.nn.Module, *, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 logits_to_keep: int | None = None, **kwargs: Any):
    """Forward ``model`` without computing its logits; return ``(output, hidden, autocast)``.

    Parameters
    ----------
    model : causal LM (possibly DDP- or PEFT-wrapped)
    input_ids, attention_mask : Tensor, long [B, T]
    logits_to_keep : int or None
        None: the head computes no logits (``output.logits`` is ``[B, 0, V]``); k: the last k
        positions' (the head check).
    **kwargs
        Passed on (``output_hidden_states``, ``output_attentions``).

    Returns
    -------
    output : the model's output
    hidden : Tensor [B, T, H]
        The decoder's ``last_hidden_state``, what the lm head reads.
    autocast : tuple of (device type, dtype) or None
        The autocast the forward ran under (so that the head's products can run under it too).
    """
    decoder = _unwrap(model).get_decoder()
    captured: dict[str, Any] = {}

    def hook(module, args, output):
        hidden = getattr(output, "last_hidden_state", None)
        captured["hidden"] = output[0] if hidden is None else hidden
        kind = captured["hidden"].device.type
        captured["autocast"] = (kind, torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else None

    keep = torch.zeros(0, dtype=torch.long, device=input_ids.device) if logits_to_keep is None else logits_to_keep
    handle = decoder.register_forward_hook(hook)
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **kwargs)
    finally:
        handle.remove()
    if "hidden" not in captured:
        raise RuntimeError(f"{type(_unwrap(model)).__name__}.get_decoder() did not run in the forward pass; "
                           "use kd_path=plain for this model")
    return out, captured["hidden"], captured["autocast"]


def output_head(model: torch.nn.Module, vocab: int, autocast: tuple[str, torch.dtype] | None = None) -> LMHead:
    """The output layer of ``model`` cut to ``vocab`` logits, with its final logit soft-capping."""
    inner = _unwrap(model)
    head = inner.get_output_embeddings()
    config = getattr(inner, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text, "final_logit_softcapping", None)
    return LMHead(head.weight, head.bias, vocab=int(vocab), softcap=None if softcap is None else float(softcap),
                  autocast=autocast)


def head_problem(model: torch.nn.Module, vocab: int, input_ids: torch.Tensor, role: str) -> str | None:
    """Why ``model``'s logits cannot be computed from its hidden states by :func:`output_head` (None: they can).

    Checks the structure (a plain ``nn.Linear`` head, a forward that takes ``logits_to_keep``, a
    decoder that runs) and then the numbers: on the last positions of ``input_ids`` [1, T] the
    model's own logits must equal the head applied to the captured hidden states.
    """
    inner = _unwrap(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        return f"the {role} has no output embeddings (get_output_embeddings() is None)"
    if type(head) is not torch.nn.Linear:
        return (f"the {role}'s output layer is a {type(head).__module__}.{type(head).__name__} (e.g. a LoRA adapter "
                "on lm_head, or a quantized layer), not a plain torch.nn.Linear")
    if not _accepts_logits_to_keep(inner):
        return f"the {role}'s forward ({type(inner).__name__}) takes no logits_to_keep"
    keep = min(_CHECK_POSITIONS, int(input_ids.shape[-1]))
    mode = model.training
    model.eval()  # no dropout: the captured hidden states and the logits come from one deterministic pass
    try:
        with torch.no_grad():
            out, hidden, _ = final_hidden(model, input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                          logits_to_keep=keep)
            want = out.logits[..., :vocab].float()
            got = output_head(model, vocab).logits(hidden[:, -keep:]).float()
            none = final_hidden(model, input_ids=input_ids, attention_mask=torch.ones_like(input_ids))[0].logits
    except Exception as err:  # noqa: BLE001 - any failure here means: not this model, use the plain path
        return f"the {role}'s forward without logits failed ({type(err).__name__}: {err})"
    finally:
        model.train(mode)
    if none is not None and none.numel() != 0:
        return f"the {role}'s forward computes logits of shape {tuple(none.shape)} with logits_to_keep=[] (none wanted)"
    if got.shape != want.shape:
        return f"the {role}'s head gives logits of shape {tuple(got.shape)}, its forward {tuple(want.shape)}"
    error = float((got - want).abs().max())
    scale = max(float(want.abs().max()), 1.0)
    if not error <= _CHECK_TOLERANCE * scale:
        return (f"the {role}'s logits are not its lm head applied to its last hidden states (max difference "
                f"{error:.3g}; e.g. a logit scale kdlens does not know)")
    return None


def kd_path_problem(cfg: Any, method: Any) -> str | None:
    """Why the run's config rules the fused KD path out (None: the models decide, :func:`resolve_kd_path`).

    ``method`` is ``METHODS[cfg.method]``; its optional ``fused_kd_problem(cfg)`` says whether every
    KD term it computes under ``cfg`` has a fused form.
    """
    if cfg.loss is None:
        return f"method={cfg.method} has no KD term on teacher logits"
    if cfg.teacher_source != "online":
        return (f"teacher_source={cfg.teacher_source} gives the teacher's top-k logits per token, not its hidden "
                "states")
    check = getattr(method, "fused_kd_problem", None)
    if check is None:
        return f"method={cfg.method} computes its loss from full logits (it has no fused KD term)"
    return check(cfg)


def resolve_kd_path(cfg: Any, method: Any, *, student: torch.nn.Module | None, teacher: torch.nn.Module | None,
                    vocab: int, cross_tokenizer: bool, sample_ids: Any, sharding: str | None = None) -> dict[str, Any]:
    """Which KD path the run takes, and why: the record written to the manifest (``"kd_path"``).

    Parameters
    ----------
    cfg : DistillConfig
        ``kd_path``: ``"plain"`` always plain; ``"auto"`` fused where it applies, plain (with the
        reason) elsewhere; ``"fused"`` fused or a ``ValueError`` naming why it cannot be.
    student, teacher : models or None
        The teacher is None when the run has no local one; both are None for a method that runs its
        own stages (``drive``: the config alone decides).
    vocab : int
        Common logit width.
    cross_tokenizer : bool
        The teacher reads its own tokenization (the KD term compares other vocabularies).
    sharding : {"fsdp", "deepspeed"} or None
        Sharded training: the heads' weights are not whole outside the models' forward passes (FSDP2
        shards them, ZeRO-3 partitions them), so the fused path does not apply.
    sample_ids : sequence of int
        Token ids of one training sequence (the head check runs the models on its first 32).

    Returns
    -------
    dict
        ``{"path": "fused" | "plain" | None, "requested": cfg.kd_path, "why": str}`` plus
        ``"chunk_rows"`` on the fused path. ``path`` is None for runs without a KD term on teacher logits.

    Raises
    ------
    ValueError
        ``kd_path=fused`` where the fused path does not apply.
    """
    record: dict[str, Any] = {"requested": cfg.kd_path}
    problem = kd_path_problem(cfg, method)
    if cfg.loss is None or (teacher is None and problem is None):
        return {**record, "path": None, "why": problem or "the run has no local teacher"}
    if cfg.kd_path == "plain":
        return {**record, "path": "plain", "why": "kd_path=plain"}
    if problem is None and cross_tokenizer:
        problem = "the teacher has another tokenizer (its logits are compared across vocabularies)"
    if problem is None and sharding is not None:
        problem = (f"sharded training ({sharding}): the lm heads' weights are whole only inside the models' "
                   "forward passes")
    if problem is None:
        device = next(student.parameters()).device
        ids = torch.as_tensor(list(sample_ids)[:32], dtype=torch.long, device=device)[None]
        for role, model in (("student", student), ("teacher", teacher)):
            problem = problem or head_problem(model, vocab, ids.to(next(model.parameters()).device), role)
    if problem is not None:
        if cfg.kd_path == "fused":
            raise ValueError(f"kd_path=fused does not apply: {problem}; use kd_path=auto (plain here) or kd_path=plain")
        return {**record, "path": "plain", "why": problem}
    device = next(student.parameters()).device
    return {**record, "path": "fused", "why": "the teacher keeps its last hidden states; the KD term runs over the "
            "two lm heads, a chunk of tokens at a time", "chunk_rows": auto_chunk_rows(vocab, device)}
