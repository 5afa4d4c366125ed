"""``metadistil``: the teacher learns to teach from a look-ahead student (Zhou et al., ACL 2022).

Every ``metadistil.update_every`` steps, before the student's step (:meth:`kdlens.distill.MethodRun.prepare_step`):

1. **pilot update**: a functional copy of the student takes one SGD step of size ``pilot_lr`` on
   the run's KD loss of the step's global batch, ``theta' = theta - eta * grad_theta L_KD(theta, phi)``
   (``word_kd``'s ``(1 - alpha) * CE + alpha * D(p_phi || q_theta)`` with the run's ``loss``,
   ``sigma`` and ``temperature``), keeping the graph (``create_graph=True``);
2. **teacher update**: the pilot's token-mean cross-entropy on a quiz batch (held out of the
   training data) is differentiated with respect to the teacher's weights through the pilot
   step, a second-order gradient ``d L_quiz(theta'(phi)) / d phi =
   -eta * (d^2 L_KD / d phi d theta)^T grad L_quiz(theta')``, clipped at ``max_grad_norm`` and
   applied with AdamW at ``teacher_lr``;
3. the loop then takes the **real student step** on the KD loss from the updated teacher (the loop's
   online teacher is this same module).

The pilot is stateless (``torch.func.functional_call`` with the updated parameters), so no copy of
the student or its optimizer is made. The teacher's weights and AdamW state are part of every
resumable training state (``state/metadistil/``); the final teacher is saved in
``<output_dir>/teacher/`` (Hugging Face format). The train log adds ``pilot_kd`` (the pilot's KD
loss), ``quiz_loss`` (the look-ahead student's quiz cross-entropy) and ``teacher_grad_norm``.

Cost: a teacher update runs the teacher and the student forward once with gradients, a
double-backward through the student and a backward through the teacher: about 3-5x a ``word_kd``
step (``benchmarks/RESULTS.md``); ``update_every`` trades that against how often the teacher moves.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from kdlens.distill._methods import RunContext, StepContext, StepData, TeacherOutput, WordKD, _ce_tokens
from kdlens.distill._onpolicy import step_generator
from kdlens.teacher import response_mask

__all__ = ["MetaDistil", "look_ahead", "teacher_hypergradient"]

Params = dict[str, torch.Tensor]


def look_ahead(params: Mapping[str, torch.Tensor], loss: torch.Tensor, step_size: float) -> Params:
    """One differentiable SGD step: ``{name: p - step_size * d loss / d p}``.

    The gradients are taken with ``create_graph=True``, so the result stays a function of whatever
    ``loss`` depends on besides ``params`` (here the teacher). A parameter the loss does not reach
    is returned unchanged.
    """
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
    return {name: p if g is None else p - step_size * g for (name, p), g in zip(params.items(), grads, strict=True)}


def teacher_hypergradient(params: Mapping[str, torch.Tensor], teacher_params: Sequence[torch.Tensor],
                          kd_loss: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
                          quiz_loss: Callable[[Mapping[str, torch.Tensor]], torch.Tensor], *,
                          step_size: float) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Gradient of the look-ahead student's quiz loss with respect to the teacher's weights.

    Parameters
    ----------
    params : mapping of str -> Tensor
        The student's trainable parameters theta (leaves with ``requires_grad``).
    teacher_params : sequence of Tensor
        The teacher's parameters phi (``requires_grad``).
    kd_loss : callable
        ``kd_loss(student params) -> scalar``, the KD loss of the training batch; it must run the
        teacher with gradients so that it depends on phi.
    quiz_loss : callable
        ``quiz_loss(student params) -> scalar``, the student's loss on the quiz batch.
    step_size : float
        eta of the pilot step.

    Returns
    -------
    grads : list of Tensor
        ``d quiz_loss(theta - eta * grad_theta kd_loss(theta, phi)) / d phi``, one per teacher
        parameter (zeros where it does not reach).
    pilot_kd, quiz : Tensor
        The two losses (detached), for logging.

    Notes
    -----
    Zhou et al. 2022, "BERT Learns to Teach: Knowledge Distillation with Meta Learning", eq. 4-6:
    the pilot update is plain SGD, as in the paper's code, whatever optimizer the real student uses.
    """
    pilot = kd_loss(params)
    quiz = quiz_loss(look_ahead(params, pilot, step_size))
    grads = torch.autograd.grad(quiz, list(teacher_params), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(teacher_params, grads, strict=True)]
    return grads, pilot.detach(), quiz.detach()


class _Functional:
    """``module(**kwargs)`` run with some of its parameters replaced (``torch.func.functional_call``)."""

    def __init__(self, module: torch.nn.Module, params: Mapping[str, torch.Tensor]) -> None:
        self.module, self.params = module, params

    def __call__(self, **kwargs: Any):
        return torch.func.functional_call(self.module, dict(self.params), args=(), kwargs=kwargs)


def _holdout(n: int, size: int, seed: int) -> tuple[list[int], list[int]]:
    """(training positions, quiz positions), a seeded split of ``range(n)``."""
    if size >= n:
        raise ValueError(f"metadistil.quiz_size={size} holds out all {n} training examples (after dropping those "
                         "without a response within max_length); lower metadistil.quiz_size or add data")
    order = torch.randperm(n, generator=step_generator(seed, 0, "holdout")).tolist()
    return sorted(order[size:]), sorted(order[:size])


def _is_main_process() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@dataclass
class _MetaDistilRun:
    ctx: RunContext
    features: list[dict[str, list[int]]]
    quiz: list[dict[str, list[int]]]
    optimizer: torch.optim.Optimizer
    updates: int = 0
    steps_done: int = 0
    saved: list[str] = field(default_factory=list)

    @property
    def teacher(self) -> torch.nn.Module:
        return self.ctx.teacher

    def _batch(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        from kdlens.data import collate

        batch = collate(list(features), pad_token_id=self.ctx.tokenizer.pad_token_id, padding_side="right")
        return {k: v.to(self.ctx.device) for k, v in batch.items()}

    def _quiz_batch(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.ctx.config
        size = cfg.metadistil.quiz_batch_size or cfg.batch_size
        picked = torch.randperm(len(self.quiz), generator=step_generator(cfg.seed, step, "quiz"))[:size].tolist()
        return self._batch([self.quiz[i] for i in sorted(picked)])

    def _teacher_with_grad(self, batch, example_indices, *, hidden=False, attentions=False) -> TeacherOutput:
        out = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return TeacherOutput(logits=out.logits[:, :-1, : self.ctx.vocab_size])

    def hypergradient(self, step: int, features: Sequence[dict[str, list[int]]], example_indices: Sequence[int],
                      student: torch.nn.Module) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """:func:`teacher_hypergradient` of step ``step`` on its global batch and its quiz batch."""
        from kdlens.losses import get_loss

        cfg = self.ctx.config
        batch, quiz = self._batch(features), self._quiz_batch(step)
        n_tokens = int(response_mask(batch["labels"]).sum())
        loss_fn = get_loss(cfg.loss, **cfg.loss_params)
        params = {n: p for n, p in student.named_parameters() if p.requires_grad}

        def kd_loss(theta: Mapping[str, torch.Tensor]) -> torch.Tensor:
            # the run's own word_kd objective, noise and temperature included, with a teacher that
            # keeps its graph
            ctx = StepContext(student=_Functional(student, theta), batch=batch, example_indices=example_indices,
                              n_tokens=n_tokens, config=cfg, teacher=self._teacher_with_grad, loss_fn=loss_fn,
                              vocab_size=self.ctx.vocab_size, step=step)
            return WordKD()(ctx)["loss"]

        def quiz_loss(theta: Mapping[str, torch.Tensor]) -> torch.Tensor:
            logits = _Functional(student, theta)(input_ids=quiz["input_ids"],
                                                 attention_mask=quiz["attention_mask"]).logits[:, :-1]
            mask = response_mask(quiz["labels"])
            return _ce_tokens(logits[..., : self.ctx.vocab_size], quiz["labels"], mask).sum() / mask.sum()

        step_size = cfg.metadistil.pilot_lr or cfg.lr
        # fused attention kernels (flash, memory-efficient) have no double backward; the math one does
        with sdpa_kernel([SDPBackend.MATH]):
            return teacher_hypergradient(params, list(self.teacher.parameters()), kd_loss, quiz_loss,
                                         step_size=step_size)

    def prepare_step(self, *, step: int, total_steps: int, example_indices: Sequence[int],
                     features: list[dict[str, list[int]]], student: torch.nn.Module) -> StepData:
        cfg = self.ctx.config
        logs: dict[str, Any] = {}
        if step % cfg.metadistil.update_every == 0:
            grads, pilot, quiz = self.hypergradient(step, features, example_indices, student)
            params = list(self.teacher.parameters())
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.updates += 1
            logs.update(pilot_kd=float(pilot), quiz_loss=float(quiz), teacher_grad_norm=float(norm))
        self.steps_done = step + 1
        if step + 1 == total_steps and _is_main_process():  # the teacher is final before the last student step
            from kdlens.distill._checkpoint import save_checkpoint

            save_checkpoint(self.ctx.run.path / "teacher", self.teacher, self.ctx.tokenizer)
        logs["teacher_updates"] = self.updates
        return StepData(features, "gold", logs)

    def state_dict(self) -> dict[str, Any]:
        """Writes the teacher's weights and AdamW state under ``state/metadistil/`` and returns where.

        The loop calls this once per saved training state, before writing that state; the previous
        teacher state is kept until the next call, so the newest complete training state always
        finds its own.
        """
        from safetensors.torch import save_file

        from kdlens._io import atomic_directory
        from kdlens.distill._checkpoint import trainable_state_dict

        relative = f"metadistil/step-{self.steps_done:08d}"
        target = self.ctx.run.state_root / relative
        with atomic_directory(target, overwrite=True) as tmp:
            save_file(trainable_state_dict({"teacher": self.teacher}), str(tmp / "teacher.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        self.saved = [*[s for s in self.saved if s != relative][-1:], relative]
        for old in (self.ctx.run.state_root / "metadistil").glob("step-*"):
            if f"metadistil/{old.name}" not in self.saved:
                shutil.rmtree(old, ignore_errors=True)
        return {"teacher_state": relative, "teacher_updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        path = self.ctx.run.state_root / state["teacher_state"]
        weights = load_file(str(path / "teacher.safetensors"))
        params = dict(self.teacher.named_parameters())
        if set(weights) != {f"teacher.{name}" for name in params}:
            raise ValueError(f"teacher state {path} does not match the teacher being trained; was the config changed?")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[f"teacher.{name}"])
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        self.updates = int(state["teacher_updates"])
        self.saved = [state["teacher_state"]]


@dataclass(frozen=True)
class MetaDistil:
    """MetaDistil: word-level KD whose teacher is trained, each step, by a look-ahead student's quiz loss.

    Notes
    -----
    Zhou, Xu, McAuley 2022, "BERT Learns to Teach: Knowledge Distillation with Meta Learning" (ACL).
    The student's loss is ``word_kd``'s; see :mod:`kdlens.distill.metadistil` for the teacher update.
    """

    name: str = "metadistil"
    needs_teacher: bool = True
    needs_hidden_states: bool = False
    default_loss: str | None = "forward_kl"
    description: str = "word_kd whose teacher learns from a look-ahead student's quiz loss (second-order)"

    def check_config(self, config: Any) -> None:
        """Settings MetaDistil cannot honour, refused before anything is loaded."""
        if config.teacher_source != "online":
            raise ValueError("method=metadistil trains the teacher, which a logit cache cannot stand in for; "
                             "use teacher_source=online")
        if config.student is None:
            raise ValueError("method=metadistil trains a student: set student=NAME_OR_PATH (or prune:N)")
        known = known_size(config.tasks, config.n_examples)
        if known is not None and config.metadistil.quiz_size >= known:
            raise ValueError(f"metadistil.quiz_size={config.metadistil.quiz_size} holds out all {known} training "
                             "examples of tasks=" + ",".join(config.tasks) + "; lower it or add data")

    def begin(self, ctx: RunContext) -> _MetaDistilRun:
        mcfg = ctx.config.metadistil
        train, quiz = _holdout(len(ctx.features), mcfg.quiz_size, ctx.config.seed)
        if len(train) < ctx.config.batch_size:
            raise ValueError(f"metadistil.quiz_size={mcfg.quiz_size} leaves {len(train)} training examples, fewer "
                             f"than one batch (batch_size={ctx.config.batch_size}); lower one of them or add data")
        ctx.teacher.requires_grad_(True)  # the loop's own teacher forward stays under no_grad
        optimizer = torch.optim.AdamW(ctx.teacher.parameters(), lr=mcfg.teacher_lr, weight_decay=0.0)
        return _MetaDistilRun(ctx, [ctx.features[i] for i in train], [ctx.features[i] for i in quiz], optimizer)

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return WordKD()(ctx)


def known_size(tasks: Sequence[str], n_examples: int | None) -> int | None:
    """The most records ``tasks`` can give, when the specs alone say it (``NAME:SIZE`` or ``n_examples``), else None."""
    total = 0
    for spec in tasks:
        name, sep, size = spec.partition(":")
        sizes = [n_examples] if n_examples is not None else []
        if sep and size.isdigit() and "/" not in spec:
            sizes.append(int(size))
        if not sizes:
            return None
        total += min(sizes)
    return total
