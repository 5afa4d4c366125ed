"""MPDistil's four stages, each resumable in its own directory, and the driver that runs them.

Layout of ``<output_dir>/`` (besides the ``config.yaml`` the loop wrote)::

    stages/data/train.jsonl, quiz.jsonl   the records of stages 1-2 and the quiz sets (kdlens records)
    stages/1_teacher/                     the fine-tuned teacher: a kdlens run (causal: ``method=sft``)
                                          or ``checkpoint/`` + ``train_log.jsonl`` (encoder)
    stages/2_student/                     the distilled student: ``checkpoint/``, ``train_log.jsonl``
    stages/3_meta_teacher/                the meta-teacher (teacher body, trained head): ``checkpoint/``
    stages/4_curriculum/                  the final student ``checkpoint/``, ``policy.safetensors`` and
                                          ``train_log.jsonl``: one row per step with the episode, the
                                          task chosen, the policy's probabilities and the reward
    checkpoint/, manifest.json, train_log.jsonl (every stage's rows, with ``stage``), done

Each stage writes ``stage.json`` (a summary) and ``done`` when complete; a skipped stage (an
ablation) writes them too, with ``"skipped": true``. A rerun skips finished stages and resumes the
running one from its last saved state (``save_every``: every N steps; stage 4 at the first episode
end after each N), ending with the same weights as an uninterrupted run: every random draw is a
function of ``(seed, step)``, dropout included.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlens._io import atomic_directory, atomic_write_json, atomic_write_text, git_sha, sha256_json, versions
from kdlens.distill._checkpoint import load_state, save_checkpoint, save_state
from kdlens.distill._onpolicy import step_generator
from kdlens.distill.mpdistil._data import STAGES, TaskSplit, split_tasks, task_labels
from kdlens.distill.mpdistil._objectives import (
    CurriculumPolicy,
    curriculum_reward,
    curriculum_student_loss,
    discounted_returns,
    meta_teacher_loss,
    reinforce_loss,
    summary_weight,
)
from kdlens.distill.mpdistil._views import CausalView, EncoderView
from kdlens.teacher import noise_seed

__all__ = ["drive"]

StepFn = Callable[[int], dict[str, Any]]


class _Group:
    """Several optimizers (or schedulers) saved and restored as one state dict."""

    def __init__(self, **items: Any) -> None:
        self.items = items

    def state_dict(self) -> dict[str, Any]:
        return {k: v.state_dict() for k, v in self.items.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in self.items.items():
            v.load_state_dict(state[k])


class _Stage:
    """One stage's directory."""

    def __init__(self, root: Path, index: int) -> None:
        self.index, self.name = index, STAGES[index]
        self.path = root / self.name

    @property
    def done(self) -> bool:
        return (self.path / "done").is_file()

    @property
    def log_path(self) -> Path:
        return self.path / "train_log.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def state_root(self) -> Path:
        return self.path / "state"

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        if self.log_path.is_file():
            for line in self.log_path.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line torn by a kill
        return rows

    def latest_state(self) -> Path | None:
        states = [p for p in self.state_root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
        return max(states, key=lambda p: int(p.name[5:]), default=None)

    def finish(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / "stage.json", {"stage": self.name, **summary})
        shutil.rmtree(self.state_root, ignore_errors=True)
        atomic_write_text(self.path / "done", "")


@dataclass
class _Run:
    """What every stage needs."""

    cfg: Any
    root: Path
    device: torch.device
    split: TaskSplit
    labels: dict[str, list[str]] | None  # encoder label sets; None for causal LMs
    callbacks: Sequence[Callable[[int, Mapping[str, Any]], None]]
    distill: Callable[..., Any]
    view: CausalView | EncoderView | None = None
    quiz: dict[str, list[dict[str, Any]]] | None = None  # encoded quiz sets (class examples), by task

    @property
    def m(self):
        return self.cfg.mpdistil

    @property
    def encoder(self) -> bool:
        return self.labels is not None

    def stage(self, index: int) -> _Stage:
        return _Stage(self.root, index)

    def load(self, path: str | os.PathLike):
        """(model, tokenizer) on the run's device."""
        from kdlens.models._encoder import load_encoder_classifier, quiet_loading

        if self.encoder:
            model, tokenizer = load_encoder_classifier(path, self.labels, seed=self.cfg.seed, dtype=self.cfg.dtype)
        else:
            from kdlens.models import load_model

            with quiet_loading():
                model, tokenizer = load_model(path, dtype=self.cfg.dtype)
        return model.to(self.device), tokenizer

    def sample(self, features: Sequence[dict[str, Any]], step: int, purpose: str, size: int) -> dict[str, torch.Tensor]:
        """A batch of ``size`` features drawn without replacement, a function of (seed, step, purpose)."""
        picked = torch.randperm(len(features), generator=step_generator(self.cfg.seed, step, purpose))[:size]
        return self.view.collate([features[i] for i in sorted(picked.tolist())], self.device)


def _fit(run: _Run, stage: _Stage, *, total: int, modules: Mapping[str, nn.Module], optimizers: Mapping[str, Any],
         schedulers: Mapping[str, Any], step_fn: StepFn, log_all: bool = False,
         can_save: Callable[[int], bool] = lambda step: True) -> list[dict[str, Any]]:
    """Run ``step_fn(step)`` for steps ``0..total-1``, resumably; return the stage's log rows.

    States are written after step ``s`` when ``save_every`` divides a step passed since the last
    save and ``can_save(s)`` (stage 4: episode ends). Each step first seeds the global generator
    from (seed, stage, step), so dropout does not depend on where a run was resumed.
    """
    cfg = run.cfg
    optimizer, scheduler = _Group(**optimizers), _Group(**schedulers)
    start = 0
    state = stage.latest_state()
    if state is not None:
        start = int(load_state(state, modules=modules, optimizer=optimizer, scheduler=scheduler)["step"])
    rows = [r for r in stage.rows() if r["step"] <= start]
    atomic_write_text(stage.log_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    last_saved = start
    with open(stage.log_path, "a", encoding="utf-8") as log:
        for step in range(start, total):
            torch.manual_seed(noise_seed(cfg.seed, step, 5000 + stage.index))
            t0 = time.perf_counter()
            row = {"stage": stage.name, "step": step + 1, **step_fn(step), "step_s": time.perf_counter() - t0}
            if log_all or (step + 1) % cfg.log_every == 0 or step + 1 == total:
                log.write(json.dumps(row, sort_keys=True) + "\n")
                log.flush()
                rows.append(row)
            due = cfg.save_every and (step + 1) // cfg.save_every > last_saved // cfg.save_every
            if due and step + 1 < total and can_save(step + 1):
                save_state(stage.state_root, step + 1, modules=modules, optimizer=optimizer, scheduler=scheduler,
                           trainer={"step": step + 1})
                last_saved = step + 1
            for callback in run.callbacks:
                callback(step + 1, row)
    return rows


def _scheduler(cfg: Any, optimizer: torch.optim.Optimizer, total: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total)


def _clip(cfg: Any, params: Sequence[torch.Tensor]) -> float:
    limit = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(params, limit))


def _supervised(run: _Run, stage: _Stage, *, model: nn.Module, tokenizer: Any, features: list[dict[str, Any]],
                steps: int | None, epochs: float | None, lr: float,
                loss_fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """Train ``model`` on ``features`` in seeded epochs of ``batch_size`` (stage 1 of an encoder, stage 2)."""
    cfg = run.cfg
    per_epoch = len(features) // cfg.batch_size
    if per_epoch == 0:
        raise ValueError(f"only {len(features)} training examples for batch_size={cfg.batch_size} ({stage.name}); "
                         "lower batch_size or add data")
    total = steps if steps is not None else max(1, math.ceil(epochs * per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(cfg, optimizer, total)
    model.train()

    def step_fn(step: int) -> dict[str, Any]:
        epoch, position = divmod(step, per_epoch)
        order = torch.randperm(len(features), generator=step_generator(cfg.seed, epoch, "order")).tolist()
        chosen = order[position * cfg.batch_size:(position + 1) * cfg.batch_size]
        parts = loss_fn(run.view.collate([features[i] for i in chosen], run.device))
        parts["loss"].backward()
        norm = _clip(cfg, params)
        lr_now = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return {"epoch": epoch, **{k: float(v.detach()) for k, v in parts.items()}, "lr": lr_now, "grad_norm": norm}

    rows = _fit(run, stage, total=total, modules={"model": model}, optimizers={"model": optimizer},
                schedulers={"model": scheduler}, step_fn=step_fn)
    save_checkpoint(stage.checkpoint, model, tokenizer)
    stage.finish({"steps": total, "final": rows[-1] if rows else None})
    return rows


def _teacher_stage(run: _Run) -> Path:
    """Stage 1: the teacher fine-tuned on the tasks' training records with cross-entropy."""
    cfg, m, stage = run.cfg, run.m, run.stage(0)
    if not m.finetune_teacher:
        if run.encoder:
            from transformers import AutoConfig

            from kdlens.models._encoder import encoder_directory

            if getattr(AutoConfig.from_pretrained(encoder_directory(cfg.teacher)), "kdlens_label_sets", None) is None:
                raise ValueError(f"mpdistil.finetune_teacher=false takes teacher={cfg.teacher!r} as fine-tuned on the "
                                 "tasks, but it has no classifier trained by kdlens; let stage 1 fine-tune it")
        if not stage.done:
            stage.finish({"skipped": True, "teacher": cfg.teacher})
        return cfg.teacher
    if stage.done:
        return stage.path
    steps, epochs = (m.teacher_steps, None) if m.teacher_steps is not None else (cfg.steps, cfg.epochs)
    lr = m.teacher_lr or cfg.lr
    if not run.encoder:  # kdlens's own sft run
        sub = {"teacher": cfg.teacher, "method": "sft", "tasks": [str(run.root / "data" / "train.jsonl")],
               "split": "train", "seed": cfg.seed, "steps": steps, "epochs": epochs, "batch_size": cfg.batch_size,
               "lr": lr, "weight_decay": cfg.weight_decay, "warmup_steps": cfg.warmup_steps,
               "scheduler": cfg.scheduler, "max_grad_norm": cfg.max_grad_norm, "max_length": cfg.max_length,
               "save_every": cfg.save_every, "log_every": cfg.log_every, "dtype": cfg.dtype,
               "mixed_precision": cfg.mixed_precision, "device": cfg.device, "system_prompt": cfg.system_prompt,
               "output_dir": str(stage.path)}
        tagged = [lambda step, logs, cb=cb: cb(step, {**logs, "stage": stage.name}) for cb in run.callbacks]
        run.distill(sub, callbacks=tagged)
        return stage.path
    model, tokenizer = run.load(cfg.teacher)
    features = [run.view.encode(r, run.split.tasks.index(r.task), purpose="train") for r in run.split.train]
    _supervised(run, stage, model=model, tokenizer=tokenizer, features=features, steps=steps, epochs=epochs, lr=lr,
                loss_fn=lambda batch: {"loss": run.view.ce(run.view.forward(model, batch).logits, batch)})
    return stage.path


def _student_stage(run: _Run, teacher_dir: str | Path) -> Path:
    """Stage 2: the student distilled with MPDistil's soft MSE, CE and normalised hidden-state MSE."""
    cfg, m, stage, view = run.cfg, run.m, run.stage(1), run.view
    if stage.done:
        return stage.path
    teacher, tokenizer = run.load(teacher_dir)
    teacher.eval().requires_grad_(False)
    if cfg.student.startswith("prune:"):
        keep = int(cfg.student.split(":", 1)[1])
        if run.encoder:
            from kdlens.models._encoder import prune_encoder

            student = prune_encoder(teacher, keep)
        else:
            from kdlens.models import prune_layers

            student = prune_layers(teacher, keep)
    else:
        student, student_tok = run.load(cfg.student)
        if not run.encoder:
            from kdlens.models import check_compatible

            check_compatible(tokenizer, student_tok, teacher_vocab_size=_width(teacher), student_vocab_size=_width(student))
    student.requires_grad_(True)
    _same_width(teacher, student)
    features = [f for r in run.split.train
                if (f := view.encode(r, run.split.tasks.index(r.task), purpose="train")) is not None]
    hidden = m.beta > 0

    def loss_fn(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            t_out = view.forward(teacher, batch, hidden=hidden)
        s_out = view.forward(student, batch, hidden=hidden)
        soft = view.soft(s_out.logits, t_out.logits, batch, tau=m.tau)
        ce = view.ce(s_out.logits, batch)
        loss = m.alpha * soft + (1.0 - m.alpha) * ce
        parts = {"soft": soft.detach(), "ce": ce.detach()}
        if hidden:
            feat = view.features(s_out.hidden_states, t_out.hidden_states, batch, layer_map=m.layer_map)
            loss = loss + m.beta * feat
            parts["hidden"] = feat.detach()
        return {"loss": loss, **parts}

    _supervised(run, stage, model=student, tokenizer=tokenizer, features=features, steps=cfg.steps,
                epochs=cfg.epochs, lr=cfg.lr, loss_fn=loss_fn)
    return stage.path


def _width(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def _same_width(teacher: nn.Module, student: nn.Module) -> None:
    t, s = int(teacher.config.hidden_size), int(student.config.hidden_size)
    if t != s:
        raise ValueError(f"MPDistil's meta-teacher reads the student's hidden states with the teacher's head, so their "
                         f"widths must match: teacher hidden_size={t}, student hidden_size={s}; use student=prune:N")


def _meta_head(run: _Run, meta: nn.Module) -> nn.Module:
    """Freeze ``meta`` but its head (untied from the input embeddings, which the body reads)."""
    meta.requires_grad_(False)
    head = run.view.head(meta)
    if not run.encoder and head.weight is meta.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
        meta.config.tie_word_embeddings = False
    head.requires_grad_(True)
    return head


def _pooled_quiz(run: _Run) -> list[dict[str, Any]]:
    return [f for task in run.split.tasks for f in run.quiz[task]]


def _meta_stage(run: _Run, teacher_dir: str | Path, student_dir: Path) -> str | Path:
    """Stage 3: the meta-teacher, the teacher's body frozen, its head trained on the quiz sets from
    the hidden states of teacher and student (collaborative or competitive loss)."""
    cfg, m, stage, view = run.cfg, run.m, run.stage(2), run.view
    if not m.meta_teacher:
        if not stage.done:
            stage.finish({"skipped": True, "meta_teacher": str(teacher_dir)})
        return teacher_dir
    if stage.done:
        return stage.path
    meta, tokenizer = run.load(teacher_dir)
    student, _ = run.load(student_dir)
    meta.eval()
    student.eval().requires_grad_(False)
    head = _meta_head(run, meta)
    optimizer = torch.optim.AdamW(head.parameters(), lr=m.meta_lr, weight_decay=cfg.weight_decay)
    pool = _pooled_quiz(run)

    def step_fn(step: int) -> dict[str, Any]:
        batch = run.sample(pool, step, "quiz", m.quiz_batch_size)
        with torch.no_grad():
            h_teacher = view.forward(meta, batch).pooled
            h_student = view.forward(student, batch).pooled
        logp_t = view.class_logp(view.head_logits(meta, h_teacher), batch)
        logp_s = view.class_logp(view.head_logits(meta, h_student), batch)
        loss = meta_teacher_loss(logp_t, logp_s, kind=m.meta_loss)
        loss.backward()
        norm = _clip(cfg, list(head.parameters()))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach()), "p_true_teacher_states": float(logp_t.detach().exp().mean()),
                "p_true_student_states": float(logp_s.detach().exp().mean()), "grad_norm": norm}

    rows = _fit(run, stage, total=m.meta_steps, modules={"meta_teacher": meta}, optimizers={"head": optimizer},
                schedulers={}, step_fn=step_fn)
    save_checkpoint(stage.checkpoint, meta, tokenizer)
    stage.finish({"steps": m.meta_steps, "meta_loss": m.meta_loss, "final": rows[-1] if rows else None})
    return stage.path


def _curriculum_stage(run: _Run, student_dir: Path, meta_dir: str | Path) -> Path:
    """Stage 4: a policy picks the task whose quiz batch the student trains on next; REINFORCE on
    the rewards (quiz examples where the student's true-class probability beats the meta-teacher's)."""
    cfg, m, stage, view = run.cfg, run.m, run.stage(3), run.view
    if m.curriculum == "none":
        if not stage.done:
            stage.finish({"skipped": True})
        return student_dir
    if stage.done:
        return stage.path
    student, tokenizer = run.load(student_dir)
    meta, _ = run.load(meta_dir)
    meta.eval().requires_grad_(False)
    student.requires_grad_(True)
    tasks = run.split.tasks
    weight = summary_weight(student, view.head(student))
    torch.manual_seed(noise_seed(cfg.seed, 0, 6000))  # the policy's initial weights
    policy = CurriculumPolicy(weight.shape[0], weight.shape[1], len(tasks)).to(run.device)
    params = [p for p in student.parameters() if p.requires_grad]
    opt_student = torch.optim.AdamW(params, lr=m.curriculum_lr or cfg.lr, weight_decay=cfg.weight_decay)
    opt_policy = torch.optim.Adam(policy.parameters(), lr=m.policy_lr)
    reward_pool = run.quiz[m.target_task] if m.target_task else _pooled_quiz(run)
    episode: dict[str, list] = {"log_probs": [], "rewards": []}

    def step_fn(step: int) -> dict[str, Any]:
        index, t = divmod(step, m.episode_steps)
        if t == 0:
            episode["log_probs"], episode["rewards"] = [], []
        probs = policy(weight)
        draw = step_generator(cfg.seed, step, "curriculum")
        if m.curriculum == "policy":
            action = int(torch.multinomial(probs.detach().double().cpu(), 1, generator=draw))
        else:
            action = int(torch.randint(len(tasks), (1,), generator=draw))
        episode["log_probs"].append(torch.log(probs[action]))
        batch = run.sample(run.quiz[tasks[action]], step, "quiz", m.quiz_batch_size)
        student.train()
        out = view.forward(student, batch)
        logp_s = view.class_logp(out.logits, batch)
        with torch.no_grad():
            logp_meta_s = view.class_logp(view.head_logits(meta, out.pooled), batch)
        loss = curriculum_student_loss(logp_s, logp_meta_s)
        loss.backward()
        norm = _clip(cfg, params)
        opt_student.step()
        opt_student.zero_grad(set_to_none=True)
        student.eval()
        rewarded = run.sample(reward_pool, step, "reward", m.quiz_batch_size)
        with torch.no_grad():
            logp_student = view.class_logp(view.forward(student, rewarded).logits, rewarded)
            logp_meta = view.class_logp(view.forward(meta, rewarded).logits, rewarded)
        reward = float(curriculum_reward(logp_student, logp_meta, kind=m.reward))
        n = len(rewarded["task"])
        episode["rewards"].append(reward / n)  # per example, so the policy's step does not scale with n
        shown = probs.detach().cpu().tolist() if m.curriculum == "policy" else [1.0 / len(tasks)] * len(tasks)
        row = {"episode": index, "task": tasks[action], "action": action, "probs": shown, "reward": reward, "reward_n": n,
               "loss": float(loss.detach()), "ce": float(-logp_s.detach().mean()), "grad_norm": norm,
               "p_true_student": float(logp_student.exp().mean()), "p_true_meta": float(logp_meta.exp().mean())}
        if t == m.episode_steps - 1 and m.curriculum == "policy":
            returns = discounted_returns(episode["rewards"], m.gamma)
            policy_loss = reinforce_loss(torch.stack(episode["log_probs"]), returns.to(run.device))
            policy_loss.backward()
            opt_policy.step()
            opt_policy.zero_grad(set_to_none=True)
            row["policy_loss"] = float(policy_loss.detach())
        return row

    total = m.episodes * m.episode_steps
    rows = _fit(run, stage, total=total, modules={"student": student, "policy": policy},
                optimizers={"student": opt_student, "policy": opt_policy}, schedulers={}, step_fn=step_fn,
                log_all=True, can_save=lambda step: step % m.episode_steps == 0)
    save_checkpoint(stage.checkpoint, student, tokenizer)
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()},
              str(stage.path / ".policy.tmp"))
    os.replace(stage.path / ".policy.tmp", stage.path / "policy.safetensors")
    per_episode = [sum(r["reward"] for r in rows if r["episode"] == e) for e in range(m.episodes)]
    choices = {task: sum(r["task"] == task for r in rows) for task in tasks}
    stage.finish({"steps": total, "curriculum": m.curriculum, "reward": m.reward, "episode_rewards": per_episode,
                  "task_choices": choices})
    return stage.path


def _check_split(cfg: Any, split: TaskSplit) -> None:
    m = cfg.mpdistil
    if m.curriculum != "none" and len(split.tasks) < 2:
        raise ValueError(f"mpdistil.curriculum={m.curriculum} chooses among tasks, but tasks={cfg.tasks} hold one "
                         f"task ({split.tasks[0]!r}); give at least two tasks or set mpdistil.curriculum=none")
    if m.target_task is not None and m.target_task not in split.tasks:
        raise ValueError(f"mpdistil.target_task={m.target_task!r} is not one of the run's tasks {split.tasks}")


def _encode_quiz(run: _Run) -> dict[str, list[dict[str, Any]]]:
    quiz = {}
    for index, task in enumerate(run.split.tasks):
        encoded = [f for r in run.split.quiz[task] if (f := run.view.encode(r, index, purpose="class")) is not None]
        if len(encoded) < run.m.quiz_batch_size:
            raise ValueError(f"task {task!r} keeps {len(encoded)} quiz examples within max_length={run.cfg.max_length}, "
                             f"fewer than mpdistil.quiz_batch_size={run.m.quiz_batch_size}; raise max_length")
        quiz[task] = encoded
    return quiz


def _make_view(run: _Run, teacher_dir: str | Path) -> CausalView | EncoderView:
    if run.encoder:
        from transformers import AutoTokenizer

        from kdlens.models._encoder import encoder_directory

        tokenizer = AutoTokenizer.from_pretrained(encoder_directory(teacher_dir))
        names = [f"{task}:{label}" for task, labels in run.labels.items() for label in labels]
        ids, start = {}, 0
        for task, labels in run.labels.items():
            ids[task] = list(range(start, start + len(labels)))
            start += len(labels)
        return EncoderView(tokenizer, label_ids=ids, label_names=names, tasks=run.split.tasks,
                           max_length=run.cfg.max_length)
    model, tokenizer = run.load(teacher_dir)
    return CausalView(tokenizer, max_length=run.cfg.max_length, system=run.cfg.system_prompt,
                      target=run.m.target, vocab_size=_width(model))


def drive(cfg: Any, *, run: Any, callbacks: Sequence[Callable[[int, Mapping[str, Any]], None]] = (),
          distill: Callable[..., Any], manifest: Mapping[str, Any] | None = None) -> None:
    """Run MPDistil's four stages for ``cfg`` into the run directory ``run`` (see the module docstring).

    ``manifest`` holds entries the loop adds to the final manifest (the run's identity, references).
    """
    from kdlens.data import load_tasks, save_records
    from kdlens.models._encoder import is_encoder
    from kdlens.models._load import resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("method=mpdistil runs its stages in one process; launch it without torchrun")
    started = time.perf_counter()
    records = load_tasks(cfg.tasks, split=cfg.split, seed=cfg.seed, n=cfg.n_examples)
    split = split_tasks(records, quiz_size=cfg.mpdistil.quiz_size, seed=cfg.seed)
    _check_split(cfg, split)
    labels = task_labels(records, split.tasks, max_labels=cfg.mpdistil.max_labels) if is_encoder(cfg.teacher) else None
    root = Path(run.path) / "stages"
    save_records(split.train, root / "data" / "train.jsonl")
    save_records([r for task in split.tasks for r in split.quiz[task]], root / "data" / "quiz.jsonl")
    state = _Run(cfg, root, resolve_device(cfg.device), split, labels, callbacks, distill)
    if labels is not None:  # an encoder's view needs only the tokenizer and the label sets
        state.view = _make_view(state, cfg.teacher)
    teacher_dir = _teacher_stage(state)
    if state.view is None:
        state.view = _make_view(state, teacher_dir)
    state.quiz = _encode_quiz(state)
    student_dir = _student_stage(state, teacher_dir)
    meta_dir = _meta_stage(state, teacher_dir, student_dir)
    final_dir = _curriculum_stage(state, student_dir, meta_dir)
    _finish(state, run, records, final_dir, time.perf_counter() - started, dict(manifest or {}))


def _finish(state: _Run, run: Any, records: Sequence[Any], final_dir: Path, wall_s: float,
            extra: dict[str, Any]) -> None:
    cfg, m = state.cfg, state.m
    with atomic_directory(run.checkpoint_path, overwrite=True) as tmp:
        for item in (final_dir / "checkpoint").iterdir():
            shutil.copy2(item, tmp / item.name)
    rows = []
    for index in range(len(STAGES)):
        stage = state.stage(index)
        rows += [{**row, "stage": stage.name} for row in stage.rows()]
    atomic_write_text(run.log_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    summaries = {}
    for index in range(len(STAGES)):
        path = state.stage(index).path / "stage.json"
        summaries[STAGES[index]] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    manifest = {
        "status": "done", **extra, "versions": versions(), "git_sha": git_sha(), "seed": cfg.seed,
        "data_hash": sha256_json([r.to_dict() for r in records]), "tasks": cfg.tasks, "task_names": state.split.tasks,
        "n_train": {t: sum(r.task == t for r in state.split.train) for t in state.split.tasks},
        "n_quiz": {t: len(state.split.quiz[t]) for t in state.split.tasks},
        "teacher": cfg.teacher, "student": cfg.student, "method": cfg.method, "model_kind": state.view.kind,
        "labels": state.labels, "method_settings": _settings(m), "final_student": str(final_dir.relative_to(run.path)),
        "stages": summaries, "final": {"wall_s": wall_s},
    }
    atomic_write_json(run.manifest_path, manifest)
    atomic_write_text(run.done_path, "")


def _settings(section: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(section)
