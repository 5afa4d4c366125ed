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

Before any of it, :func:`distill` compares the run's identity (config, data, weights:
:mod:`kdlens.distill._identity`) with what the directory holds, under the directory's lock
(:mod:`kdlens._lock`): a finished run of the same identity is returned untouched, an interrupted
one resumes, another identity is an error unless ``overwrite``. Models, data and sizes are all
checked before the first write, so a bad input leaves the directory as it was; one that only the
method's start or the first step can find (a held-out size, a layer map) removes what was written.

Normalising every micro-batch by the token count of the whole global batch (known in advance
from the labels) makes the update a token mean over the global batch, so 2 x 4 accumulation equals
one batch of 8 and N processes equal one at the same global batch (DDP averages gradients, so each
process's loss is multiplied by the process count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlens._io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    git_sha,
    sha256_json,
    versions,
)
from kdlens._lock import exclusive_lock, shared_lock
from kdlens.citations import run_references
from kdlens.config import DistillConfig, load_config
from kdlens.distill._checkpoint import load_state, save_checkpoint, save_state
from kdlens.distill._cross_tokenizer import CrossTokenizerTeacher, uses_cross_tokenizer
from kdlens.distill._identity import RunIdentity, check_run_dir, refuse_foreign, run_identity
from kdlens.distill._lora import apply_lora
from kdlens.distill._methods import RunContext, StepContext, TeacherOutput
from kdlens.distill._registry import METHODS
from kdlens.distill._rundir import RunDir
from kdlens.distill._trackers import Trackers, tracker_settings
from kdlens.teacher import TeacherCache, cache_key

__all__ = ["distill", "StepCallback"]

#: ``callback(step, logs)`` after every optimizer step (1-based step, the logged row). An exception
#: raised here stops the run like a kill: the states saved so far stay and the next call resumes (a run
#: stopped before it logged or saved anything starts over).
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
        raise ValueError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
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
    served = cfg.teacher_source == "endpoint"  # the teacher is an HTTP endpoint, not loaded here
    if cfg.teacher and not served and (method.needs_teacher or (cfg.student or "").startswith("prune:")
                                       or cfg.student is None):
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


def _encode(cfg: DistillConfig, tokenizer):
    """The training examples within max_length (whole prompts; see :mod:`kdlens.distill._examples`)."""
    from kdlens.data import load_tasks
    from kdlens.distill._examples import encode_examples

    records = load_tasks(cfg.tasks, split=cfg.split, seed=cfg.seed, n=cfg.n_examples)
    return encode_examples(tokenizer, records, max_length=cfg.max_length, system=cfg.system_prompt)


def _target_count(feature: Mapping[str, Sequence[int]]) -> int:
    """Tokens the loss counts in one sequence (labels after the first position)."""
    return sum(label != -100 for label in feature["labels"][1:])


def _steps_per_epoch(n: int, cfg: DistillConfig) -> int:
    if n < cfg.batch_size:
        raise ValueError(f"only {n} training examples for batch_size={cfg.batch_size}; lower batch_size or add data")
    return n // cfg.batch_size


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen).tolist()


def _teacher_id(name: str) -> str:
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _write_log(run: RunDir, rows: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(run.log_path, "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in rows))


def distill(config: DistillConfig | Mapping[str, Any] | str | os.PathLike, *,
            callbacks: Sequence[StepCallback] = (), overwrite: bool = False) -> RunDir:
    """Train a student (or fine-tune a teacher) as ``config`` says; return its run directory.

    Parameters
    ----------
    config : DistillConfig, mapping or path to a YAML file
        See :class:`kdlens.config.DistillConfig`; ``output_dir`` is required.
    callbacks : sequence of callable
        ``callback(step, logs)`` after each optimizer step (see :data:`StepCallback`).
    overwrite : bool
        When ``output_dir`` holds a run of another identity (or one made before kdlens recorded
        identities), delete it and train this config there. A run of the same identity is kept.

    Returns
    -------
    RunDir
        The finished run. A run's identity is its resolved config (less ``output_dir``, ``cache_dir``
        and ``save_every``, ``log_every``, ``report_to``, which change no weight), its training data and
        its models' weights (:func:`kdlens.distill.run_identity`).
        Calling again with the same identity on a finished run returns at once and writes nothing;
        on an interrupted run it resumes from the latest saved state (same weights as an
        uninterrupted run), or completes a run killed while finishing.

    Raises
    ------
    ValueError
        ``output_dir`` holds a run of another identity (the message names the changed config keys,
        ``data``, ``teacher weights`` or ``student weights``) and ``overwrite`` is False; or a bad
        input (checked before anything is written); or ``output_dir`` is a file or not writable.
    kdlens._lock.DirectoryInUseError
        Another process is writing ``output_dir`` (the message names it).
    """
    cfg = _as_config(config)
    if not cfg.output_dir:
        raise ValueError("output_dir is not set: where should the run directory go? (output_dir=runs/NAME)")
    run = RunDir(cfg.output_dir)
    if run.path.exists() and not run.path.is_dir():
        raise ValueError(f"output_dir {run.path} is a file, not a directory; choose another path")
    identity = run_identity(cfg)  # reads the data and fingerprints the weights; writes nothing
    refuse_foreign(run)  # a directory kdlens did not make gets not even a lock file
    if run.done:  # the common rerun: read under a shared lock, touch nothing
        with shared_lock(run.path):
            if check_run_dir(run, identity, overwrite=overwrite) == "finished" and not run.leftovers():
                return run
    accelerator = _accelerator(cfg)
    lock = exclusive_lock(run.path, what="run") if accelerator.is_main_process else contextlib.nullcontext()
    with lock:
        try:
            return _train(cfg, run, identity, accelerator, callbacks, overwrite)
        except Exception:  # not an interrupt: a kill keeps what it stopped, as a kill does
            if accelerator.is_main_process:  # a bad input found after the first write leaves nothing
                run.discard_unstarted(identity)
            raise


def _train(cfg: DistillConfig, run: RunDir, identity: RunIdentity, accelerator, callbacks: Sequence[StepCallback],
           overwrite: bool) -> RunDir:
    """Everything of :func:`distill` after the lock: check the directory and the inputs, then write and train."""
    plan = check_run_dir(run, identity, overwrite=overwrite)
    if plan == "finished" or (plan == "resume" and run.has_checkpoint):
        if accelerator.is_main_process and plan == "resume":  # killed while finishing: complete it
            run.complete()
        elif accelerator.is_main_process:  # finished, with what a kill left behind
            run.remove_leftovers()
        accelerator.wait_for_everyone()
        return run
    if hasattr(METHODS[cfg.method], "drive"):  # a method that runs its own stages (see Method.drive)
        if accelerator.is_main_process:
            if plan == "replace":
                run.clear()
            run.remove_leftovers()
            run.start(cfg, identity)
        accelerator.wait_for_everyone()
        METHODS[cfg.method].drive(cfg, run=run, callbacks=callbacks, distill=distill,
                                  manifest={"identity": identity.to_dict(), "references": run_references(cfg)})
        return run
    if plan == "resume":
        _check_same_precision(run, accelerator)
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
    cross = teacher is not None and uses_cross_tokenizer(cfg, teacher_tok, tokenizer)  # different tokenizers
    if teacher is not None and not cross:
        from kdlens.models import check_compatible

        vocab = check_compatible(teacher_tok, tokenizer, teacher_vocab_size=_logit_width(teacher),
                                 student_vocab_size=vocab)
    encoded = _encode(cfg, tokenizer)
    features, records = encoded.features, encoded.records
    data_hash = sha256_json([[f["input_ids"], f["labels"]] for f in features])
    if cfg.lora is not None:  # before the first write: a target the model lacks is a config error
        student = apply_lora(student, cfg.lora)
    if not hasattr(method, "begin"):
        _steps_per_epoch(len(features), cfg)
    loss_fn = None
    if cfg.loss is not None:  # methods with a KD term on teacher logits
        from kdlens.losses import get_loss

        loss_fn = get_loss(cfg.loss, **cfg.loss_params)
    from kdlens.data import collate as _collate
    from kdlens.distill._preflight import preflight

    pad_id = tokenizer.pad_token_id

    def collate(feats):
        return _collate(list(feats), pad_token_id=pad_id, padding_side="right")

    # on the first batch, with the online teacher (a logit cache is built only after the first write); a
    # cross-tokenizer or served teacher has no logits on the student's tokens here, and sharded models are not
    # placed yet (FSDP/DeepSpeed place them shard by shard): then only the tokenizer checks run
    forward_checks = not cross and not shard_teacher and _sharding(accelerator) is None
    if forward_checks:
        student.to(accelerator.device)  # where accelerate would put it; the teacher is there already
    checks = preflight(cfg, student=student,
                       teacher_fn=_make_teacher_fn(teacher, None, vocab, accelerator) if forward_checks else None,
                       loss_fn=loss_fn, tokenizer=tokenizer, teacher_tokenizer=None if cross else teacher_tok,
                       features=encoded.features,
                       records=encoded.records, collate=collate, vocab=vocab, device=accelerator.device,
                       log=accelerator.is_main_process)
    trackers = Trackers(cfg.report_to, run.path, enabled=accelerator.is_main_process)  # a missing package fails here
    if accelerator.is_main_process:  # every input is checked: the first write
        if plan == "replace":
            run.clear()
        run.remove_leftovers()
        run.start(cfg, identity)
    accelerator.wait_for_everyone()
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
    steps_per_epoch = _steps_per_epoch(n, cfg)
    total_steps = cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))

    teacher_id = _teacher_id(cfg.teacher) if cfg.teacher else None
    cache = None
    if teacher is not None and cfg.teacher_source == "cache":
        root = Path(cfg.cache_dir) if cfg.cache_dir else _default_cache_root()
        precision = str(_autocast_dtype(accelerator) or torch.float32).removeprefix("torch.")
        # keyed by the teacher's weights, not its path: a teacher retrained in place gets a new cache
        path = root / cache_key(teacher_weights=identity.teacher_weights, data_hash=data_hash,
                                max_length=cfg.max_length, top_k=cfg.top_k, dtype=cfg.cache_dtype, vocab_size=vocab,
                                precision=precision)
        if accelerator.is_main_process and not TeacherCache.is_complete(path):
            TeacherCache.build(path, teacher=teacher, features=features, collate=collate, top_k=cfg.top_k,
                               vocab_size=vocab, teacher_weights=identity.teacher_weights, teacher_name=teacher_id,
                               data_hash=data_hash,
                               max_length=cfg.max_length, dtype=cfg.cache_dtype, batch_size=micro_size,
                               device=accelerator.device, autocast_dtype=_autocast_dtype(accelerator),
                               progress=_progress_enabled(accelerator))
        accelerator.wait_for_everyone()
        cache = TeacherCache.open(path, teacher_weights=identity.teacher_weights, data_hash=data_hash)
        teacher = None  # the cache replaces it; free its memory
    if cfg.teacher_source == "endpoint" and method.needs_teacher:  # a served teacher's top-k, as a cache
        from kdlens.teacher_endpoint import endpoint_cache

        cache = endpoint_cache(cfg, features, data_hash=data_hash, vocab_size=vocab,
                               root=Path(cfg.cache_dir) if cfg.cache_dir else _default_cache_root(),
                               is_main_process=accelerator.is_main_process, wait=accelerator.wait_for_everyone,
                               token_to_id=tokenizer.get_vocab(), progress=_progress_enabled(accelerator))
        teacher_id = cache.index["teacher"]
    if shard_teacher and teacher is not None:
        teacher = _shard_for_inference(accelerator, teacher)
    teacher_fn = _make_teacher_fn(teacher, cache, vocab, accelerator)
    if cross:  # the teacher reads its own tokenization of every example
        teacher_fn = CrossTokenizerTeacher(teacher, teacher_tok, tokenizer, features, records, loss=cfg.loss,
                                           loss_params=cfg.loss_params, max_length=cfg.max_length,
                                           system=cfg.system_prompt, autocast=accelerator.autocast)

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
        manifest = _manifest(cfg, run, "running", teacher_id, data_hash, n, encoded, total_steps, accelerator,
                             modules, cache, None, checks, identity)
        if cross:
            manifest["cross_tokenizer"] = teacher_fn.summary()
        atomic_write_json(run.manifest_path, manifest)
    trackers.start(tracker_settings(cfg))
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
                                  step=step, batch_source=source,
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
                trackers.log(last_logs, step + 1)
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
        trackers.finish()

    accelerator.wait_for_everyone()
    gathered = _gathered(accelerator, wrapped["student"])  # sharded weights: every process takes part
    if accelerator.is_main_process:  # finishing: see kdlens.distill._rundir for why in this order
        if "projection" in wrapped:
            from safetensors.torch import save

            proj = {k: v.detach().cpu().contiguous()
                    for k, v in accelerator.unwrap_model(wrapped["projection"]).state_dict().items()}
            atomic_write_bytes(run.path / "feature_projection.safetensors", save(proj))
        merge = cfg.lora.merge if cfg.lora is not None else True
        trained = gathered if gathered is not None else accelerator.unwrap_model(wrapped["student"])
        save_checkpoint(run.checkpoint_path, trained, tokenizer,
                        merge_lora=merge)  # from here on a killed run is completed, not trained again
        manifest = _manifest(cfg, run, "done", teacher_id, data_hash, n, encoded, total_steps, accelerator,
                             modules, cache, {"wall_s": time.perf_counter() - started, **last_logs}, checks, identity)
        if cross:
            manifest["cross_tokenizer"] = teacher_fn.summary()
        run.mark_done(manifest)
    accelerator.wait_for_everyone()
    return run


def _check_same_precision(run: RunDir, accelerator) -> None:
    """Refuse to resume, in another precision, a run whose saved state was trained in one.

    ``mixed_precision=auto`` (and ``device=auto``) resolve where the run is called: bf16 on a GPU,
    none on a CPU. The identity keeps ``auto`` (a finished run reads the same everywhere), so the
    state's precision is checked against the one the run recorded when it started training.
    """
    if run.latest_state() is None or not run.manifest_path.is_file():
        return
    recorded = run.manifest()
    before, now = recorded.get("mixed_precision"), str(accelerator.mixed_precision)
    if before is not None and before != now:
        raise ValueError(f"{run.path} was started with mixed precision {before} on {recorded.get('device')}; resuming it "
                         f"now {now} on {accelerator.device} would train its second half in another precision: "
                         "resume it where it started, or set mixed_precision explicitly and pass overwrite=True "
                         "(--overwrite) to train it again")


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


def _manifest(cfg: DistillConfig, run: RunDir, status: str, teacher_id, data_hash: str, n: int, encoded,
              total_steps: int, accelerator, modules, cache, final, preflight, identity: RunIdentity) -> dict[str, Any]:
    trainable = sum(p.numel() for m in modules.values() for p in m.parameters() if p.requires_grad)
    return {
        "status": status,
        "identity": identity.to_dict(),
        "versions": versions(),
        "git_sha": git_sha(),
        "seed": cfg.seed,
        "data_hash": data_hash,
        "tasks": cfg.tasks,
        "n_examples": n,
        "n_dropped_examples": encoded.n_dropped,
        "dropped_examples": encoded.dropped,  # reason -> count (kdlens.distill._examples.DROP_REASONS)
        "n_truncated_responses": encoded.truncated,
        "teacher": teacher_id,
        "student": cfg.trained_model,
        "method": cfg.method,
        "method_settings": _method_settings(cfg),
        "loss": cfg.loss,
        "loss_params": _loss_params_used(cfg),
        "kd_weight": cfg.kd_weight,
        "feature_weight": cfg.feature_weight,
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
        "preflight": preflight,  # kdlens.distill._preflight: the checks on the first batch
        "final": final,
        "references": run_references(cfg),  # use -> BibTeX keys (kdlens.citations; `kdlens cite RUN_DIR`)
    }


def _method_settings(cfg: DistillConfig) -> dict[str, Any] | None:
    """The method's own config section (e.g. ``metadistil``), as recorded in the manifest."""
    section = getattr(cfg, cfg.method, None)
    return dataclasses.asdict(section) if dataclasses.is_dataclass(section) else None


def _loss_params_used(cfg: DistillConfig) -> dict[str, Any]:
    """Every parameter of the divergence the run trains with: the loss's defaults, then the config's."""
    from kdlens.losses import LOSSES

    return {**LOSSES[cfg.loss].params, **cfg.loss_params} if cfg.loss is not None else {}


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
