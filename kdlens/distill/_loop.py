"""The training loop: one readable function from a config to a finished run directory.

``distill(config)`` loads teacher and student, encodes the tasks, builds the teacher signal
(online or a top-k cache), then runs AdamW with a warmup schedule on ``accelerate``:

    for each optimizer step:
        the step's GLOBAL batch (seeded permutation per epoch) is cut into grad_accum micro-batches,
        each split across processes;
        for each micro-batch: loss = method(student, teacher signal, batch) / (target tokens of the
        whole global batch); backward (gradients synchronised only on the last micro-batch)
        clip, step, schedule; log; save a resumable state every save_every steps
    save checkpoint/ (HF format), manifest.json, then done

Normalising every micro-batch by the token count of the whole global batch (known in advance
from the labels) makes the update a token mean over the global batch, so 2 x 4 accumulation equals
one batch of 8 and N processes equal one at the same global batch (DDP averages gradients, so each
process's loss is multiplied by the process count).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlens._io import atomic_write_json, atomic_write_text, git_sha, sha256_json, versions
from kdlens.config import DistillConfig, config_to_yaml, load_config
from kdlens.distill._checkpoint import load_state, save_checkpoint, save_state
from kdlens.distill._lora import apply_lora
from kdlens.distill._methods import RunContext, StepContext, TeacherOutput
from kdlens.distill._registry import METHODS
from kdlens.distill._rundir import RunDir
from kdlens.teacher import TeacherCache, cache_key

__all__ = ["distill", "StepCallback"]

#: ``callback(step, logs)`` after every optimizer step (1-based step, the logged row). An exception
#: raised here stops the run like a kill: the states saved so far stay and the next call resumes.
StepCallback = Callable[[int, Mapping[str, Any]], None]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_config(config: DistillConfig | Mapping[str, Any] | str | os.PathLike) -> DistillConfig:
    if isinstance(config, DistillConfig):
        return config
    if isinstance(config, Mapping):
        return DistillConfig.from_dict(config)
    return load_config(config)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _accelerator(cfg: DistillConfig):
    from accelerate import Accelerator

    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "no"
    if mixed != "no" and not use_cuda:
        mixed = "no"  # autocast on CPU is slower than fp32 and changes numerics; tests run fp32
    return Accelerator(cpu=not use_cuda, mixed_precision=mixed)


def _load_models(cfg: DistillConfig, device: torch.device | None):
    """(teacher or None, student, tokenizer, teacher tokenizer or None); the teacher stays on the CPU when
    ``device`` is None (FSDP shards it onto the devices)."""
    from kdlens.models import load_model, prune_layers

    dtype = _DTYPES[cfg.dtype]
    method = METHODS[cfg.method]
    # attention maps are only returned by the eager implementation; set it on the teacher before
    # pruning, because pruned layers keep a copy of the teacher's config
    eager = cfg.method == "feature_kd" and cfg.feature.attention
    teacher = teacher_tok = None
    if cfg.teacher and (method.needs_teacher or (cfg.student or "").startswith("prune:") or cfg.student is None):
        teacher, teacher_tok = load_model(cfg.teacher, dtype=dtype)
        if eager:
            teacher.set_attn_implementation("eager")
    if cfg.student is None:
        student, tokenizer = teacher, teacher_tok  # sft on the teacher itself (a task-aware teacher)
        teacher = teacher_tok = None
    elif cfg.student.startswith("prune:"):
        student, tokenizer = prune_layers(teacher, int(cfg.student.split(":", 1)[1])), teacher_tok
    else:
        student, tokenizer = load_model(cfg.student, dtype=dtype)
        if eager:
            student.set_attn_implementation("eager")
    if not method.needs_teacher:
        teacher = teacher_tok = None
    if teacher is not None:
        teacher.requires_grad_(False)
        teacher.eval()
        if device is not None:
            teacher.to(device)
    return teacher, student, tokenizer, teacher_tok


def _logit_width(model: torch.nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def _encode(cfg: DistillConfig, tokenizer) -> tuple[list[dict[str, list[int]]], list[Any], int]:
    """Encoded training examples that have at least one target token, their records, and how many were dropped."""
    from kdlens.data import encode_for_training, load_tasks

    records = load_tasks(cfg.tasks, split=cfg.split, seed=cfg.seed, n=cfg.n_examples)
    features, kept, dropped = [], [], 0
    for record in records:
        feat = encode_for_training(tokenizer, record, max_length=cfg.max_length, system=cfg.system_prompt)
        if _target_count(feat):
            features.append({k: list(feat[k]) for k in ("input_ids", "attention_mask", "labels")})
            kept.append(record)
        else:
            dropped += 1  # the response was truncated away: nothing to learn from it
    if not features:
        raise ValueError(f"tasks {cfg.tasks} gave no example with a response within max_length={cfg.max_length}")
    return features, kept, dropped


def _target_count(feature: Mapping[str, Sequence[int]]) -> int:
    """Tokens the loss counts in one sequence (labels after the first position)."""
    return sum(label != -100 for label in feature["labels"][1:])


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen).tolist()


def _teacher_id(name: str) -> str:
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _write_log(run: RunDir, rows: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(run.log_path, "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in rows))


def _check_or_write_config(run: RunDir, cfg: DistillConfig) -> None:
    if run.config_path.is_file():
        previous = load_config(run.config_path)
        if previous.to_dict() != cfg.to_dict():
            changed = sorted(k for k, v in cfg.to_dict().items() if previous.to_dict().get(k) != v)
            raise ValueError(f"{run.path} holds an unfinished run with a different config (changed: {changed}); "
                             "use another output_dir, or delete the directory to start over")
    else:
        atomic_write_text(run.config_path, config_to_yaml(cfg))


def distill(config: DistillConfig | Mapping[str, Any] | str | os.PathLike, *,
            callbacks: Sequence[StepCallback] = ()) -> RunDir:
    """Train a student (or fine-tune a teacher) as ``config`` says; return its run directory.

    Parameters
    ----------
    config : DistillConfig, mapping or path to a YAML file
        See :class:`kdlens.config.DistillConfig`; ``output_dir`` is required.
    callbacks : sequence of callable
        ``callback(step, logs)`` after each optimizer step (see :data:`StepCallback`).

    Returns
    -------
    RunDir
        The finished run. Calling again on a finished run returns at once and writes nothing; on
        an interrupted run it resumes from the latest saved state (same weights as an uninterrupted
        run); on a directory holding a different config it raises ValueError.
    """
    cfg = _as_config(config)
    if not cfg.output_dir:
        raise ValueError("output_dir is not set: where should the run directory go? (output_dir=runs/NAME)")
    run = RunDir(cfg.output_dir)
    if run.done:
        return run
    accelerator = _accelerator(cfg)
    if accelerator.is_main_process:
        _check_or_write_config(run, cfg)
    accelerator.wait_for_everyone()
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_size, rem = divmod(cfg.batch_size, cfg.grad_accum * world)
    if rem or micro_size == 0:
        raise ValueError(f"batch_size={cfg.batch_size} (global) must be a multiple of grad_accum x processes "
                         f"= {cfg.grad_accum} x {world}")

    _seed_everything(cfg.seed)
    method = METHODS[cfg.method]
    shard_teacher = _check_sharded(accelerator, cfg, method)
    with _whole_models(accelerator):
        teacher, student, tokenizer, teacher_tok = _load_models(cfg, None if shard_teacher else accelerator.device)
    vocab = _logit_width(student)
    if teacher is not None:
        from kdlens.models import check_compatible

        vocab = check_compatible(teacher_tok, tokenizer, teacher_vocab_size=_logit_width(teacher),
                                 student_vocab_size=vocab)
    features, records, dropped = _encode(cfg, tokenizer)
    data_hash = sha256_json([[f["input_ids"], f["labels"]] for f in features])
    method_run = None
    if hasattr(method, "begin"):  # generation-based methods: their own training data and per-step batches
        begin = RunContext(config=cfg, run=run, features=features, records=records, tokenizer=tokenizer,
                           teacher=teacher, vocab_size=vocab, device=accelerator.device)
        if accelerator.is_main_process:  # writes the method's caches in the run directory
            method_run = method.begin(begin)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            method_run = method.begin(begin)  # reads the caches the main process wrote
        features = method_run.features
    n = len(features)
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"only {n} training examples for batch_size={cfg.batch_size}; lower batch_size or add data")
    total_steps = cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))

    from kdlens.data import collate as _collate

    pad_id = tokenizer.pad_token_id

    def collate(feats):
        return _collate(list(feats), pad_token_id=pad_id, padding_side="right")

    teacher_id = _teacher_id(cfg.teacher) if cfg.teacher else None
    cache = None
    if teacher is not None and cfg.teacher_source == "cache":
        root = Path(cfg.cache_dir) if cfg.cache_dir else _default_cache_root()
        precision = str(_autocast_dtype(accelerator) or torch.float32).removeprefix("torch.")
        path = root / cache_key(teacher_id=teacher_id, data_hash=data_hash, max_length=cfg.max_length,
                                top_k=cfg.top_k, dtype=cfg.cache_dtype, vocab_size=vocab, precision=precision)
        if accelerator.is_main_process and not TeacherCache.is_complete(path):
            TeacherCache.build(path, teacher=teacher, features=features, collate=collate, top_k=cfg.top_k,
                               vocab_size=vocab, teacher_id=teacher_id, data_hash=data_hash,
                               max_length=cfg.max_length, dtype=cfg.cache_dtype, batch_size=micro_size,
                               device=accelerator.device, autocast_dtype=_autocast_dtype(accelerator),
                               progress=_progress_enabled(accelerator))
        accelerator.wait_for_everyone()
        cache = TeacherCache.open(path, teacher_id=teacher_id, data_hash=data_hash)
        teacher = None  # the cache replaces it; free its memory
    if shard_teacher and teacher is not None:
        teacher = _shard_for_inference(accelerator, teacher)
    teacher_fn = _make_teacher_fn(teacher, cache, vocab, accelerator)

    if cfg.lora is not None:
        student = apply_lora(student, cfg.lora)
    modules: dict[str, torch.nn.Module] = {"student": student}
    if cfg.method == "feature_kd" and cfg.feature.hidden:
        projection = _projection(cfg, student, teacher)
        if projection is not None:
            modules["projection"] = projection
    student.train()
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(cfg, optimizer, total_steps)
    names = list(modules)
    _configure_sharding(accelerator, cfg, modules, micro_size)
    prepared = accelerator.prepare(*modules.values(), optimizer)
    wrapped = dict(zip(names, prepared[:-1], strict=True))
    optimizer = prepared[-1]
    params = [p for m in wrapped.values() for p in m.parameters() if p.requires_grad]  # FSDP replaces them
    loss_fn = None
    if method.needs_teacher:
        from kdlens.losses import get_loss

        loss_fn = get_loss(cfg.loss, **cfg.loss_params)

    start = 0
    state = run.latest_state()
    if state is not None:
        trainer = load_state(state, modules={k: accelerator.unwrap_model(v) for k, v in wrapped.items()},
                             optimizer=optimizer, scheduler=scheduler)
        start = int(trainer["step"])
        if method_run is not None:
            method_run.load_state_dict(trainer["method_state"])
        log_rows = [r for r in run.log() if r.get("step", 0) <= start]
    else:
        log_rows = []
    if accelerator.is_main_process:
        _write_log(run, log_rows)  # drops rows logged after the state we resumed from
        atomic_write_json(run.manifest_path, _manifest(cfg, run, "running", teacher_id, data_hash, n, dropped,
                                                       total_steps, accelerator, modules, cache, None))
    started = time.perf_counter()

    log_file = open(run.log_path, "a", encoding="utf-8") if accelerator.is_main_process else None
    progress = _progress(range(start, total_steps), accelerator, initial=start, total=total_steps)
    last_logs: dict[str, Any] = {}
    try:
        for step in progress:
            epoch, position = divmod(step, steps_per_epoch)
            order = _epoch_order(n, cfg.seed, epoch)
            global_batch = order[position * cfg.batch_size:(position + 1) * cfg.batch_size]
            t0 = time.perf_counter()
            step_features = [features[i] for i in global_batch]
            source, step_logs = "gold", {}
            if method_run is not None:  # e.g. replace the gold batch by the student's samples
                prepared = method_run.prepare_step(step=step, total_steps=total_steps, example_indices=global_batch,
                                                   features=step_features,
                                                   student=accelerator.unwrap_model(wrapped["student"]))
                step_features, source = prepared.features, prepared.source
                step_logs = {**prepared.logs, "batch_source": source}
            n_tokens = sum(_target_count(f) for f in step_features)
            sums: dict[str, torch.Tensor] = {}
            input_tokens = 0
            per_micro = cfg.batch_size // cfg.grad_accum
            for micro in range(cfg.grad_accum):
                chunk = range(micro * per_micro, (micro + 1) * per_micro)  # positions in the global batch
                mine = chunk[rank * micro_size:(rank + 1) * micro_size]
                batch = {k: v.to(accelerator.device) for k, v in collate([step_features[j] for j in mine]).items()}
                input_tokens += sum(int(sum(step_features[j]["attention_mask"])) for j in chunk)
                ctx = StepContext(student=wrapped["student"], batch=batch,
                                  example_indices=[global_batch[j] for j in mine], n_tokens=n_tokens,
                                  config=cfg, teacher=teacher_fn, loss_fn=loss_fn, vocab_size=vocab,
                                  step=step, micro=micro, rank=rank, batch_source=source,
                                  modules={k: v for k, v in wrapped.items() if k != "student"})
                sync = micro == cfg.grad_accum - 1
                with _maybe_no_sync(accelerator, list(wrapped.values()), sync):
                    parts = method(ctx)
                    # DDP averages gradients over processes; each process holds 1/world of the tokens
                    accelerator.backward(parts["loss"] * world)
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float()
                del parts, ctx, batch  # free logits before the next forward
            grad_norm = None
            if cfg.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - t0
            reduced = {k: float(accelerator.reduce(v.reshape(1), reduction="sum")) for k, v in sums.items()}
            last_logs = {"step": step + 1, "epoch": epoch, **reduced, **step_logs, "lr": lr, "target_tokens": n_tokens,
                         "tokens_per_s": input_tokens / max(elapsed, 1e-9)}
            if grad_norm is not None:
                last_logs["grad_norm"] = float(grad_norm)
            if log_file is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == total_steps):
                log_file.write(json.dumps(last_logs, sort_keys=True) + "\n")
                log_file.flush()
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
                if accelerator.is_main_process:
                    save_state(run.state_root, step + 1,
                               modules={k: accelerator.unwrap_model(v) for k, v in wrapped.items()},
                               optimizer=optimizer, scheduler=scheduler,
                               trainer={"step": step + 1, "epoch": (step + 1) // steps_per_epoch,
                                        "batch_in_epoch": (step + 1) % steps_per_epoch,
                                        "data_order_seed": cfg.seed, "n_examples": n,
                                        "method_state": method_run.state_dict() if method_run else None})
                accelerator.wait_for_everyone()
            if hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{reduced['loss']:.4f}")
            for callback in callbacks:
                callback(step + 1, last_logs)
    finally:
        if log_file is not None:
            log_file.close()

    accelerator.wait_for_everyone()
    gathered = _gathered(accelerator, wrapped["student"])  # sharded weights: every process takes part
    if accelerator.is_main_process:
        merge = cfg.lora.merge if cfg.lora is not None else True
        trained = gathered if gathered is not None else accelerator.unwrap_model(wrapped["student"])
        save_checkpoint(run.checkpoint_path, trained, tokenizer, merge_lora=merge)
        if "projection" in wrapped:
            from safetensors.torch import save_file

            proj = {k: v.detach().cpu().contiguous()
                    for k, v in accelerator.unwrap_model(wrapped["projection"]).state_dict().items()}
            save_file(proj, str(run.path / ".projection.tmp"))
            os.replace(run.path / ".projection.tmp", run.path / "feature_projection.safetensors")
        manifest = _manifest(cfg, run, "done", teacher_id, data_hash, n, dropped, total_steps, accelerator,
                             modules, cache, {"wall_s": time.perf_counter() - started, **last_logs})
        atomic_write_json(run.manifest_path, manifest)
        shutil.rmtree(run.state_root, ignore_errors=True)
        atomic_write_text(run.done_path, "")
    accelerator.wait_for_everyone()
    return run


def _default_cache_root() -> Path:
    from kdlens.models import cache_root

    return cache_root() / "teacher"


def _autocast_dtype(accelerator) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))


def _make_teacher_fn(teacher, cache: TeacherCache | None, vocab: int, accelerator):
    if cache is not None:
        from kdlens.teacher import response_mask

        def cached(batch, example_indices, *, hidden=False, attentions=False):
            return TeacherOutput(logits=cache.batch(example_indices, response_mask(batch["labels"])))

        return cached
    if teacher is None:
        return None

    def online(batch, example_indices, *, hidden=False, attentions=False):
        with torch.no_grad(), accelerator.autocast():
            out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          output_hidden_states=hidden, output_attentions=attentions)
        return TeacherOutput(logits=out.logits[:, :-1, :vocab], hidden_states=out.hidden_states if hidden else None,
                             attentions=out.attentions if attentions else None)

    return online


def _projection(cfg: DistillConfig, student, teacher):
    from kdlens.losses import FeatureProjection

    s_dim, t_dim = int(student.config.hidden_size), int(teacher.config.hidden_size)
    wanted = cfg.feature.projection if cfg.feature.projection is not None else s_dim != t_dim
    return FeatureProjection(s_dim, t_dim) if wanted else None


def _scheduler(cfg: DistillConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)


class _maybe_no_sync:
    """Skip DDP gradient all-reduce on all but the last micro-batch of an accumulation window."""

    def __init__(self, accelerator, models, sync: bool) -> None:
        import contextlib

        self._stack = contextlib.ExitStack()
        self._enter = [] if sync else [accelerator.no_sync(m) for m in models]
        # DeepSpeed steps its engine inside accelerator.backward unless told the window is not over
        self._state = accelerator.gradient_state if _sharding(accelerator) == "deepspeed" else None
        self._sync = sync

    def __enter__(self):
        if self._state is not None:
            self._state._set_sync_gradients(self._sync)
        for ctx in self._enter:
            self._stack.enter_context(ctx)
        return self

    def __exit__(self, *exc):
        if self._state is not None:
            self._state._set_sync_gradients(True)
        return self._stack.__exit__(*exc)


def _progress_enabled(accelerator) -> bool:
    return accelerator.is_main_process and sys.stderr.isatty()


def _progress(iterable, accelerator, *, initial: int, total: int):
    if not _progress_enabled(accelerator):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, initial=initial, total=total, desc="distill", unit="step")


def _manifest(cfg: DistillConfig, run: RunDir, status: str, teacher_id, data_hash: str, n: int, dropped: int,
              total_steps: int, accelerator, modules, cache, final) -> dict[str, Any]:
    trainable = sum(p.numel() for m in modules.values() for p in m.parameters() if p.requires_grad)
    return {
        "status": status,
        "versions": versions(),
        "git_sha": git_sha(),
        "seed": cfg.seed,
        "data_hash": data_hash,
        "tasks": cfg.tasks,
        "n_examples": n,
        "n_dropped_examples": dropped,
        "teacher": teacher_id,
        "student": cfg.trained_model,
        "method": cfg.method,
        "loss": cfg.loss if METHODS[cfg.method].needs_teacher else None,
        "loss_params": cfg.loss_params,
        "alpha": cfg.alpha,
        "beta": cfg.beta,
        "sigma": cfg.sigma,
        "temperature": cfg.temperature,
        "scale_by_temperature_squared": cfg.scale_by_temperature_squared,
        "teacher_source": cfg.teacher_source,
        "teacher_cache": str(cache.path) if cache is not None else None,
        "top_k": cfg.top_k if cache is not None else None,
        "steps": total_steps,
        "global_batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": str(accelerator.mixed_precision),
        "distributed": _distributed(accelerator, cfg),
        "lora": cfg.lora is not None,
        "trainable_parameters": trainable,
        "final": final,
    }


# ----------------------------------------------------------------- sharded training: FSDP and DeepSpeed
# Under `accelerate launch --config_file kdlens/configs/accelerate/{fsdp,deepspeed_zero2,...}.yaml` the
# student's parameters (FSDP, ZeRO-3), gradients and optimizer state (FSDP, ZeRO-2/3) are split across the
# processes. The loop above stays the same; these helpers do what differs.


def _sharding(accelerator) -> str | None:
    """``"fsdp"``, ``"deepspeed"`` or None (one process, DDP): whether the training state is sharded."""
    from accelerate.utils import DistributedType

    return {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(accelerator.distributed_type)


def _check_sharded(accelerator, cfg: DistillConfig, method) -> bool:
    """Refuse what sharded training does not support; whether the teacher is sharded too (online FSDP)."""
    kind = _sharding(accelerator)
    if kind is None:
        return False
    if kind == "fsdp" and not accelerator.is_fsdp2:
        raise ValueError("FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config "
                         "(kdlens/configs/accelerate/fsdp.yaml)")
    if cfg.save_every:
        raise ValueError(f"save_every={cfg.save_every}: resumable states are not written under {kind}, whose "
                         "optimizer state is sharded; set save_every=0 (a killed run then starts over)")
    if cfg.lora is not None:
        raise ValueError(f"LoRA is not supported under {kind}: train the adapters with DDP "
                         "(kdlens/configs/accelerate/ddp.yaml), where they fit on every GPU")
    if hasattr(method, "begin"):
        raise ValueError(f"method={cfg.method} generates with the student, which {kind} shards: use DDP "
                         "(kdlens/configs/accelerate/ddp.yaml) or one process")
    return kind == "fsdp" and cfg.teacher_source == "online"


class _whole_models:
    """Load models whole on every process, also under ZeRO-3.

    While accelerate's DeepSpeed config is registered with transformers, ``from_pretrained`` partitions
    a ZeRO-3 model as it loads it (``deepspeed.zero.Init``), whatever ``zero3_init_flag`` says: the
    teacher would then be empty outside an engine, and ``prune:N`` could not copy its layers. The
    student is partitioned when DeepSpeed prepares it.
    """

    def __init__(self, accelerator) -> None:
        self._plugin = accelerator.state.deepspeed_plugin if _sharding(accelerator) == "deepspeed" else None

    def __enter__(self):
        if self._plugin is not None:
            from transformers.integrations import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
        return self

    def __exit__(self, *exc):
        if self._plugin is not None:
            self._plugin.set_deepspeed_weakref()
        return False


def _shard_for_inference(accelerator, teacher: torch.nn.Module) -> torch.nn.Module:
    """The frozen teacher, sharded by FSDP2 like the student but prepared without an optimizer.

    It has no gradients and no optimizer state; its parameters are gathered layer by layer in the
    forward pass and freed after, and kept on the CPU when the accelerate config has
    ``fsdp_offload_params: true`` (kdlens/configs/accelerate/fsdp_offload.yaml).
    """
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, teacher)


def _configure_sharding(accelerator, cfg: DistillConfig, modules: Mapping[str, torch.nn.Module],
                        micro_size: int) -> None:
    """Check the modules FSDP2 can prepare; give DeepSpeed the loop's batch, accumulation and clipping.

    The loop cuts batches itself (no DataLoader for DeepSpeed to read them from), accumulates by
    telling DeepSpeed where a window ends (so DeepSpeed's own accumulation stays 1 and does not rescale
    the loss), and clips at ``max_grad_norm`` inside DeepSpeed's step; an accelerate config that sets
    these otherwise would silently change the update, so it is an error.
    """
    kind = _sharding(accelerator)
    if kind == "fsdp" and len(modules) > 1:
        raise ValueError(f"FSDP2 trains one module, but this run trains {sorted(modules)} "
                         "(feature.projection): use DDP, or feature.projection=false with equal hidden sizes")
    if kind != "deepspeed":
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    wanted = {"train_micro_batch_size_per_gpu": micro_size, "gradient_accumulation_steps": 1,
              "gradient_clipping": float(cfg.max_grad_norm), "train_batch_size": micro_size * accelerator.num_processes}
    for key, value in wanted.items():
        if ds.get(key, "auto") not in ("auto", value):
            setting = {"gradient_accumulation_steps": "grad_accum", "gradient_clipping": "max_grad_norm"}.get(key, "batch_size")
            raise ValueError(f"the DeepSpeed config sets {key}={ds[key]!r}; kdlens sets it from the run config "
                             f"({setting}): remove it from the accelerate/DeepSpeed config")
        ds[key] = value


def _gathered(accelerator, model: torch.nn.Module) -> torch.nn.Module | None:
    """On the main process, an unsharded CPU copy of a sharded trained model (else None).

    Every process must call it: gathering the shards is a collective. The copy is built on the meta
    device and takes the gathered tensors as they are, so the model exists once more only on the main
    process; saving the sharded module itself would start collectives on one process and hang.
    """
    if _sharding(accelerator) is None:
        return None
    from torch.distributed.tensor import DTensor

    state = accelerator.get_state_dict(model) or {}  # ZeRO-3: None off the main process
    # full tensors on a GPU; on CPU processes (gloo) torch leaves FSDP2's shards, gathered here in order
    state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}
    if not accelerator.is_main_process:
        return None
    from transformers import AutoModelForCausalLM

    config = accelerator.unwrap_model(model).config
    with _whole_models(accelerator), torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(state, strict=False, assign=True)
    plain.tie_weights()  # a tied output layer shares the gathered input embedding
    missing = sorted(name for name, tensor in plain.state_dict().items() if tensor.is_meta)
    if missing:
        raise RuntimeError(f"the gathered checkpoint of the student lacks {missing[:5]}")
    return plain


def _distributed(accelerator, cfg: DistillConfig) -> dict[str, Any]:
    """How the run was spread over processes (the manifest's ``distributed``)."""
    kind = _sharding(accelerator)
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    out: dict[str, Any] = {"type": str(accelerator.distributed_type.value), "process_group": backend,
                           "world_size": accelerator.num_processes, "sharding": None, "cpu_offload": False,
                           "mixed_precision": str(accelerator.mixed_precision),
                           "teacher": ("cache" if cfg.teacher_source == "cache" else
                                       "sharded" if kind == "fsdp" else "replicated")
                           if METHODS[cfg.method].needs_teacher else None}
    if kind == "fsdp":
        plugin = accelerator.state.fsdp_plugin
        out["sharding"] = f"fsdp{plugin.fsdp_version}:" + ("FULL_SHARD" if plugin.reshard_after_forward
                                                           else "SHARD_GRAD_OP")
        out["cpu_offload"] = type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
    elif kind == "deepspeed":
        zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        out["sharding"] = f"zero{zero.get('stage', 0)}"
        out["cpu_offload"] = any(zero.get(k, {}).get("device", "none") not in ("none", None)
                                 for k in ("offload_optimizer", "offload_param"))
    return out
