"""Pre-flight checks: before the first step, on one batch, does the run's KD objective make sense?

Peers shipped for months losses whose log-space mixture was taken in the wrong space, whose
temperature softened one side only or whose weight sat on the wrong side, and pairs of models whose
tokenizers silently disagreed. :func:`preflight` looks for that class of bug on the run's own
first batch (at most :data:`MAX_ROWS` response tokens of it) and returns a record for the manifest:

``self_divergence`` (error when it fails)
    The run's divergence of the teacher against itself, at the run's temperature, is 0
    (``|D(p, p)| <= 1e-4``). Not applicable to ``soft_cross_entropy`` (the teacher's entropy there).
``descent`` (error for the KL family, warning for the others)
    Moving the student's logits a small step toward the teacher's, ``z_s + eps (z_t - z_s)``
    (float64), lowers the loss, and the autograd derivative along that direction is negative and
    matches the finite difference (within 25 %): the loss decreases where the student copies the
    teacher, and its gradient says so. Forward and reverse KL (and soft cross-entropy) provably
    fall along that line (their derivative at the student is ``-KL(q||p) - KL(p||q)`` and
    ``-Var_q(z_t - z_s)``), and JSD and the skew KLs were never seen to rise there (random
    searches over tau, logit scales and parameters), so for them a failure is a bug and stops the
    run. Losses on probabilities (L1, L2, MSE, TVD, the AB family, sorted L1) need not fall along
    a straight line in logit space when the student is far from its teacher: a failure there is
    a warning. A loss that is flat there (saturated, as JSD between two confident models that
    disagree, or identically 0, as skew KL at alpha = 1, or already at its minimum up to rounding)
    is recorded as not applying, with a warning, not called broken.
``tokenizers`` (warning)
    Teacher and student agree on the chat template, the special tokens (EOS, BOS, pad), the padding
    side, and the encoding of the first examples (the same ids and the same response mask): the
    teacher reads exactly what its own tokenizer would give it.
``teacher_nll`` (warning)
    The teacher's mean NLL of the gold response tokens is below the student's: a teacher that knows
    the task less than the student (task-unaware, or broken) is named as such.

Objective failures raise ``ValueError`` (training would optimise a broken loss); tokenizer and
teacher-quality findings are warnings on the ``kdlens.distill`` logger. Everything is recorded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kdlens.teacher import TopK, dense_teacher_logits, kd_token_loss, response_mask

__all__ = ["preflight", "check_self_divergence", "check_descent", "check_tokenizers", "check_teacher_nll",
           "MAX_ROWS", "DESCENT_REQUIRED"]

_LOG = logging.getLogger("kdlens.distill")

#: response tokens of the first batch the objective checks use (float64 [rows, V] temporaries)
MAX_ROWS = 64
#: |D(p, p)| above this is not 0
SELF_TOLERANCE = 1e-4
#: step toward the teacher, and the agreement asked of autograd and the finite difference
_EPS = 1e-3
_SLOPE_RTOL = 0.25
#: a loss whose slope and finite difference are both below this (times max(1, loss)) is flat at the student
_FLAT = 1e-9
#: the divergences for which a failed descent is an error (see the module docstring)
DESCENT_REQUIRED = frozenset({"forward_kl", "reverse_kl", "soft_cross_entropy", "jsd", "skew_forward_kl",
                                  "skew_reverse_kl"})


def _loss(loss_fn: Callable, student: torch.Tensor, teacher: torch.Tensor | TopK, cfg: Any) -> torch.Tensor:
    """Token-mean of the run's divergence over rows ``[N, V]`` (no noise: the objective itself)."""
    mask = torch.ones(student.shape[:-1], dtype=torch.bool, device=student.device)
    values = kd_token_loss(loss_fn, student, teacher, mask=mask, temperature=cfg.temperature,
                           scale_by_temperature_squared=cfg.scale_by_temperature_squared, tail=cfg.cache_tail)
    return values.mean()


def check_self_divergence(loss_fn: Callable, teacher: torch.Tensor | TopK, cfg: Any, *, vocab: int) -> dict[str, Any]:
    """``D(p_teacher, p_teacher)`` on rows ``[N, V]`` (or their top-k entries): 0 for every divergence."""
    from kdlens.losses import LOSSES

    if not LOSSES[cfg.loss].zero_at_equality:
        return {"ok": True, "applies": False, "why": f"{cfg.loss} is not 0 at equality (the teacher's entropy)"}
    as_student = dense_teacher_logits(teacher, vocab) if isinstance(teacher, TopK) else teacher
    value = float(_loss(loss_fn, as_student.float(), teacher, cfg))
    return {"ok": math.isfinite(value) and abs(value) <= SELF_TOLERANCE, "applies": True, "value": value}


def check_descent(loss_fn: Callable, student: torch.Tensor, teacher: torch.Tensor, cfg: Any) -> dict[str, Any]:
    """Does the loss fall when the student's logits ``[N, V]`` move toward the teacher's (float64)?"""
    s, t = student.detach().double(), teacher.detach().double()
    direction = t - s
    at = s.clone().requires_grad_(True)
    before = _loss(loss_fn, at, t, cfg)
    if float(direction.abs().max()) <= 1e-9:  # a student that is a copy of its teacher: nowhere to go
        return {"ok": True, "applies": False, "why": "the student's logits equal the teacher's",
                "loss": float(before.detach())}
    (grad,) = torch.autograd.grad(before, at)
    slope = float((grad * direction).sum())
    with torch.no_grad():
        after = float(_loss(loss_fn, s + _EPS * direction, t, cfg))
    before = float(before.detach())
    finite_difference = (after - before) / _EPS
    if max(abs(slope), abs(finite_difference)) <= _FLAT * max(1.0, abs(before)):
        return {"ok": True, "applies": False, "loss": before, "slope": slope, "finite_difference": finite_difference,
                "why": "the loss is flat at the student (saturated, identically 0, or at its minimum up to rounding)"}
    ok = (math.isfinite(before) and math.isfinite(after) and after < before and slope < 0
          and abs(slope - finite_difference) <= _SLOPE_RTOL * abs(finite_difference))
    return {"ok": ok, "loss": before, "loss_after_step": after, "step": _EPS, "slope": slope,
            "finite_difference": finite_difference}


def check_tokenizers(teacher_tok: Any, student_tok: Any, records: Sequence[Any], *,
                     system: str | None = None) -> dict[str, Any]:
    """Where the teacher's tokenizer and the student's disagree (an empty ``differs`` when they don't)."""
    from kdlens.data import encode_for_training

    differs: dict[str, str] = {}
    if getattr(teacher_tok, "chat_template", None) != getattr(student_tok, "chat_template", None):
        differs["chat_template"] = "the chat templates differ"
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        a, b = getattr(teacher_tok, name, None), getattr(student_tok, name, None)
        if a != b:
            differs[name] = f"teacher {a}, student {b}"
    if getattr(teacher_tok, "padding_side", None) != getattr(student_tok, "padding_side", None):
        differs["padding_side"] = f"teacher {teacher_tok.padding_side}, student {student_tok.padding_side}"
    for record in records:
        mine = encode_for_training(student_tok, record, max_length=None, system=system)
        theirs = encode_for_training(teacher_tok, record, max_length=None, system=system)
        if mine["input_ids"] != theirs["input_ids"]:
            differs["encoding"] = f"example {record.id!r} encodes to other token ids"
            break
        if [x == -100 for x in mine["labels"]] != [x == -100 for x in theirs["labels"]]:
            differs["response_mask"] = f"example {record.id!r} has another response mask"
            break
    return {"ok": not differs, "differs": differs, "examples": len(records)}


def check_teacher_nll(teacher: torch.Tensor | TopK, student: torch.Tensor, labels: torch.Tensor, *,
                      vocab: int) -> dict[str, Any]:
    """Mean NLL of the gold next tokens under teacher and student (logits ``[B, T-1, V]``, labels ``[B, T]``)."""
    mask = response_mask(labels)
    target = labels[:, 1:][mask]
    t = dense_teacher_logits(teacher, vocab) if isinstance(teacher, TopK) else teacher
    nll = {name: float(F.cross_entropy(z[mask].float(), target)) for name, z in (("teacher", t), ("student", student))}
    return {"ok": nll["teacher"] < nll["student"], "teacher": nll["teacher"], "student": nll["student"],
            "from_cache": isinstance(teacher, TopK), "tokens": int(mask.sum())}


def preflight(cfg: Any, *, student: torch.nn.Module, teacher_fn: Callable | None, loss_fn: Callable | None,
              tokenizer: Any, teacher_tokenizer: Any, features: Sequence[Mapping[str, Sequence[int]]],
              records: Sequence[Any], collate: Callable, vocab: int, device: torch.device,
              log: bool = True) -> dict[str, Any]:
    """Run the checks that apply to this run on its first batch; raise on a broken objective.

    Parameters
    ----------
    cfg : DistillConfig
    student : nn.Module
        The student as it starts training (its mode is restored).
    teacher_fn : callable or None
        The run's teacher signal (``teacher(batch, example_indices) -> TeacherOutput``); None: no teacher.
    loss_fn : callable or None
        The run's divergence; None for methods without a KD term.
    tokenizer, teacher_tokenizer : tokenizers of the student and the teacher
    features : sequence of dict
        Encoded training examples; the first ``min(batch_size, 8)`` form the batch (their dataset
        indices are their positions, as the teacher cache expects).
    records : sequence of Record
        The records of the gold examples (the first four are encoded by both tokenizers).
    collate : callable
        Pads a list of features into a right-padded batch.
    vocab : int
        Common logit width.
    log : bool
        Emit the warnings (the main process only).

    Returns
    -------
    dict
        ``{check: {"ok": bool, ...}}`` plus ``"warnings"``: the record for the manifest.

    Raises
    ------
    ValueError
        ``self_divergence`` or ``descent`` failed: one line naming the loss and the numbers.
    """
    report: dict[str, Any] = {"warnings": []}
    if teacher_tokenizer is not None:
        report["tokenizers"] = check_tokenizers(teacher_tokenizer, tokenizer, list(records[:4]),
                                                system=cfg.system_prompt)
        if not report["tokenizers"]["ok"]:
            items = "; ".join(f"{k}: {v}" for k, v in report["tokenizers"]["differs"].items())
            report["warnings"].append(f"teacher and student tokenizers disagree ({items}): the teacher reads input "
                                      "its own tokenizer would not produce")
    if teacher_fn is None:
        return _finish(report, log)
    k = min(cfg.batch_size, 8, len(features))
    batch = {key: value.to(device) for key, value in collate(list(features[:k])).items()}
    mode = student.training
    student.eval()
    try:
        with torch.no_grad():
            s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            s_logits = s_logits[:, :-1, :vocab].float()
    finally:
        student.train(mode)
    teacher = teacher_fn(batch, list(range(k))).logits
    report["teacher_nll"] = check_teacher_nll(teacher, s_logits, batch["labels"], vocab=vocab)
    nll = report["teacher_nll"]
    if not nll["ok"]:
        report["warnings"].append(
            f"the teacher's gold NLL on the task ({nll['teacher']:.3f}) is not below the student's "
            f"({nll['student']:.3f}): a task-unaware or broken teacher; KD pulls the student toward it (fine-tune "
            "the teacher on the task first, or check teacher=)")
    if loss_fn is not None:
        mask = response_mask(batch["labels"])
        rows = mask.flatten().nonzero().squeeze(-1)[:MAX_ROWS]
        s_rows = s_logits.reshape(-1, s_logits.shape[-1])[rows]
        if isinstance(teacher, TopK):
            t_rows = TopK(*(x.reshape(-1, *x.shape[2:])[rows] for x in (teacher.values, teacher.indices,
                                                                        teacher.residual)))
            dense = dense_teacher_logits(t_rows, vocab)
        else:
            t_rows = dense = teacher.float().reshape(-1, teacher.shape[-1])[rows]
        report["self_divergence"] = check_self_divergence(loss_fn, t_rows, cfg, vocab=vocab)
        report["descent"] = check_descent(loss_fn, s_rows, dense, cfg)
        _raise_on_broken_objective(cfg, report)
    return _finish(report, log)


def _raise_on_broken_objective(cfg: Any, report: Mapping[str, Any]) -> None:
    """Raise on a broken objective; add a warning for what a sound loss can also do (module docstring)."""
    what = f"loss={cfg.loss} {dict(cfg.loss_params)} at temperature {cfg.temperature:g}"
    self_check, descent = report["self_divergence"], report["descent"]
    if descent.get("applies") is False and "slope" in descent:
        report["warnings"].append(f"{what} is flat at the student on the first batch ({descent['why']}): the KD "
                                  "term gives the student no signal there")
    elif not descent["ok"] and cfg.loss not in DESCENT_REQUIRED:
        report["warnings"].append(
            f"{what} rises when the student's logits move a step toward the teacher's (loss {descent['loss']:.6g} -> "
            f"{descent['loss_after_step']:.6g}): a loss on probabilities need not fall along that line when the "
            "student is far from its teacher; if training does not converge, check the loss")
        descent = {**descent, "ok": True}
    if not self_check["ok"]:
        raise ValueError(f"pre-flight: {what} of the teacher against itself is {self_check['value']:.3g}, not 0: the "
                         "divergence is broken (e.g. temperature on one side only, or a mixture that underflows); "
                         "fix the loss before training")
    if not descent["ok"]:
        raise ValueError(f"pre-flight: {what} does not fall when the student moves toward the teacher (loss "
                         f"{descent['loss']:.6g} -> {descent['loss_after_step']:.6g} after a step of {_EPS:g}; "
                         f"autograd slope {descent['slope']:.3g}, finite difference {descent['finite_difference']:.3g}): "
                         "the loss or its gradient is broken (e.g. a sign, or a detached student side)")


def _finish(report: dict[str, Any], log: bool) -> dict[str, Any]:
    if log:
        for warning in report["warnings"]:
            _LOG.warning("pre-flight: %s", warning)
    return report
