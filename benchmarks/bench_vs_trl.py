"""kdlens's word-level KD step against TRL's distillation trainers and against the floor.

Variants (same teacher, student, batch, precision; forward KL, temperature 1, pure KD):

* ``floor``        a teacher forward under no_grad plus one SFT step of the student: the work a KD
                   step cannot avoid;
* ``kdlens``       one step of the engine as a run does it, default config (``kd_path=auto``): the
                   loop's own path resolution (``kdlens.distill._heads.resolve_kd_path``, fused here:
                   the teacher keeps its last hidden states, the divergence runs over the two lm
                   heads), teacher signal (``kdlens.distill._loop._make_teacher_fn``) and
                   ``METHODS["word_kd"]``, AdamW;
* ``kdlens_plain`` the same with ``kd_path=plain`` (full ``[B, T, V]`` logits of both models);
* ``trl_gkd``      ``trl.experimental.gkd.GKDTrainer.compute_loss`` with lambda = 0, beta = 0 (forward
                   KL), then backward and AdamW;
* ``trl_distill``  ``trl.DistillationTrainer``'s loss (its chunked divergence over the two lm-heads)
                   with beta = 0 on the batch's second half as the completion (that trainer
                   generates its completions on-policy; here it scores the given ones, so only
                   the loss path is compared), then backward and AdamW, where the installed TRL
                   has it.

Memory: each variant runs in its own process; a figure is the growth of the process's peak resident
memory (``VmHWM``, reset through ``/proc/self/clear_refs`` after giving freed heap back with
``malloc_trim``) over its resident memory at the reset. Two figures per variant:

* ``peak_growth_mib`` (the step's memory, what the ratios use): over ``--repeats`` steps after the
  first, reset after the first, so a step's own transient memory (activations, logits, gradients,
  the optimizer's update) counts and the optimizer's state, allocated once, is part of the base;
* ``first_step_growth_mib``: the first step, over the state after setup (models loaded, optimizer
  built, batch on the device). It includes allocating AdamW's state (twice the student's
  parameters), the same in every variant, which on a small student dominates the figure and pulls
  every ratio toward 1 (``first_step_ratios``);
* ``forward_backward_growth_mib``: the later steps' peak up to the end of backward (before the
  optimizer's update): the memory of the loss paths alone (``forward_backward_ratios``).

On CUDA: ``torch.cuda.max_memory_allocated`` growth over the allocation at the reset. The caching
allocator counts exactly what is allocated, so there (``--memory inline``, the default on CUDA) the
variants run one after another in the process that then times them: the same figures without a
process start per variant (what keeps the GPU script short); ``first_step_growth_mib`` is then left
out (only the first variant would allocate AdamW's state).

Time: all variants in one process, steps interleaved round-robin after one warm-up step each, the
median per variant, so a shared machine's load falls on every variant alike; the process's CPU time
per step too (``cpu_time_ratios``), which another job's load stretches much less than the wall time.

Models: SmolLM2-135M-Instruct (30 layers, V = 49,152, tied embeddings) and its ``--layers`` prune;
``--vocab V`` gives a randomly initialised teacher with SmolLM2's architecture and V tokens (no
download, no weights read: ``--vocab 49152`` is SmolLM2's shapes with random weights, 151,936 is
Qwen2.5's vocabulary). ``--quick`` uses a small random Llama (hidden 128,
2 layers, student 1 layer) with a realistic vocabulary (``--vocab``, default 32,768), so the logits
dominate the step as they do at scale.

Usage::

    python benchmarks/bench_vs_trl.py --quick                      # tiny models, V = 32k, one JSON line
    python benchmarks/bench_vs_trl.py --layers 4 --batch 4 --seq 128 --repeats 5
    python benchmarks/bench_vs_trl.py --vocab 151936 --layers 4     # Qwen2.5's vocabulary, random weights

TRL is an optional extra (``pip install -e .[bench]``); the variants it needs are skipped, with the
reason in the result (``skipped``), when it is absent or its trainer cannot be built against the
installed transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
#: SmolLM2-135M-Instruct's architecture (its config.json), for random teachers of another vocabulary
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
                "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "vocab_size": 49152}
VARIANTS = ("floor", "kdlens", "kdlens_plain", "trl_gkd", "trl_distill")
QUICK_VOCAB = 32768


# --------------------------------------------------------------------------- models and batch


def _models(args):
    """(teacher, student, tokenizer) on ``args.device``: SmolLM2 (or the tiny model) and a layer prune."""
    import torch

    from kdlens.models import load_model, prune_layers

    if args.quick or args.vocab is not None:
        teacher, tok = _random_teacher(args)
    else:
        teacher, tok = load_model(args.teacher)
    torch.manual_seed(0)
    student = prune_layers(teacher, args.layers)
    teacher.requires_grad_(False)
    return teacher.to(args.device).eval(), student.to(args.device).train(), tok


def _random_teacher(args):
    """A randomly initialised teacher with ``args.vocab`` tokens (no download): SmolLM2's architecture,
    or with ``--quick`` a small Llama (hidden 128, 2 layers)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdlens.models import load_model

    _, tok = load_model("tiny")  # token ids are drawn at random below; only the pad id is read
    if args.quick:
        config = AutoConfig.for_model("llama", vocab_size=args.vocab, hidden_size=128, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=True)
    else:
        config = AutoConfig.for_model("llama", **{**SMOLLM2_135M, "vocab_size": args.vocab})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config), tok


def _batch(args, vocab: int, torch):
    """Random token ids, labels on the second half of each row (the prompt half is masked)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen)
    labels = ids.clone()
    labels[:, : args.seq // 2] = -100
    return {"input_ids": ids.to(args.device), "attention_mask": torch.ones_like(ids).to(args.device),
            "labels": labels.to(args.device)}


# --------------------------------------------------------------------------- steps


def _step_fns(args, names):
    """name -> zero-argument function doing one optimizer step of that variant (models shared)."""
    import torch

    teacher, student, tok = _models(args)
    vocab = int(student.get_output_embeddings().weight.shape[0])
    batch = _batch(args, vocab, torch)
    n_tokens = int((batch["labels"][:, 1:] != -100).sum())
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    device_type = torch.device(args.device).type
    fns, skipped = {}, {}
    for name in names:
        make = {"floor": _floor, "kdlens": _kdlens, "kdlens_plain": _kdlens_plain, "trl_gkd": _trl_gkd,
                "trl_distill": _trl_distill}[name]
        try:
            fn = make(args, teacher, student, tok, batch, n_tokens, vocab)
        except _Skip as err:
            print(f"{name} skipped: {err}", file=sys.stderr)
            skipped[name] = str(err)
            continue

        def step(fn=fn, after_backward=None):
            # bf16: the forward passes and the loss under autocast, as accelerate (kdlens) and the HF
            # Trainer (TRL) run them; master weights stay float32
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                loss = fn()
            loss.backward()
            if after_backward is not None:
                after_backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())

        fns[name] = step
    return fns, skipped, torch


class _Skip(Exception):
    """A variant that cannot run here (TRL absent, or its trainer not built against this transformers)."""


def _floor(args, teacher, student, tok, batch, n_tokens, vocab):
    import torch

    from kdlens.config import DistillConfig
    from kdlens.distill import METHODS, StepContext

    cfg = DistillConfig(teacher="t", student="prune:1", tasks=["x"], method="sft")
    ctx = StepContext(student=student, batch=batch, example_indices=list(range(args.batch)), n_tokens=n_tokens,
                      config=cfg, vocab_size=vocab)

    def loss():
        with torch.no_grad():
            teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return METHODS["sft"](ctx)["loss"]

    return loss


def _kdlens(args, teacher, student, tok, batch, n_tokens, vocab, kd_path="auto"):
    """What the loop runs for a word_kd step: its path resolution, teacher signal and method object."""
    from accelerate import Accelerator

    from kdlens.config import DistillConfig
    from kdlens.distill import METHODS, StepContext
    from kdlens.distill._heads import resolve_kd_path
    from kdlens.distill._loop import _make_teacher_fn
    from kdlens.losses import get_loss

    cfg = DistillConfig(teacher="t", student="prune:1", tasks=["x"], method="word_kd", loss="forward_kl",
                        kd_path=kd_path, mixed_precision=args.precision)
    cuda = args.device.startswith("cuda")
    # the precision every variant's accelerator is built with (accelerate keeps one per process: TRL's
    # trainers build theirs with the same, _trl_args); the step runs under the benchmark's autocast anyway
    accelerator = Accelerator(cpu=not cuda, mixed_precision=args.precision)
    path = resolve_kd_path(cfg, METHODS["word_kd"], student=student, teacher=teacher, vocab=vocab, cross_tokenizer=False,
                           sample_ids=batch["input_ids"][0].tolist())
    print(f"kd_path ({kd_path}): {path}", file=sys.stderr)
    teacher_fn = _make_teacher_fn(teacher, None, vocab, accelerator, fused=path["path"] == "fused")
    ctx = StepContext(student=student, batch=batch, example_indices=list(range(args.batch)), n_tokens=n_tokens,
                      config=cfg, teacher=teacher_fn, loss_fn=get_loss("forward_kl"), vocab_size=vocab)
    method = METHODS["word_kd"]
    return lambda: method(ctx)["loss"]


def _kdlens_plain(args, teacher, student, tok, batch, n_tokens, vocab):
    return _kdlens(args, teacher, student, tok, batch, n_tokens, vocab, kd_path="plain")


def _trl_args(cls, tmp: str, args, **extra):
    # dropout stays as the model config says, as in a kdlens run (TRL turns it off by default); the
    # trainer moves the (shared) models to its device, so it must be the benchmark's
    return cls(output_dir=tmp, report_to=[], use_cpu=not args.device.startswith("cuda"), bf16=args.precision == "bf16",
               per_device_train_batch_size=1, logging_steps=1000, save_strategy="no", disable_dropout=False, **extra)


def _dataset(tok):
    from datasets import Dataset

    return Dataset.from_list([{"messages": [{"role": "user", "content": "1+1?"},
                                            {"role": "assistant", "content": "2"}]}])


def _trl_gkd(args, teacher, student, tok, batch, n_tokens, vocab):
    import tempfile

    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError as err:
        raise _Skip(f"{err} (pip install -e .[bench])") from err
    try:
        conf = _trl_args(GKDConfig, tempfile.mkdtemp(), args, lmbda=0.0, beta=0.0, temperature=1.0,
                         max_length=args.seq)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=conf, train_dataset=_dataset(tok),
                             processing_class=tok)
    except Exception as err:  # noqa: BLE001 - another TRL/transformers pairing: say so, measure the rest
        raise _Skip(f"GKDTrainer could not be built: {type(err).__name__}: {err}") from err
    return lambda: trainer.compute_loss(student, batch, num_items_in_batch=n_tokens)


def _trl_distill(args, teacher, student, tok, batch, n_tokens, vocab):
    import tempfile

    import torch

    try:
        from trl import DistillationConfig, DistillationTrainer
    except ImportError as err:
        raise _Skip(f"{err} (pip install -e .[bench]; DistillationTrainer is in TRL >= 1.x)") from err
    try:
        tok.padding_side = "left"
        conf = _trl_args(DistillationConfig, tempfile.mkdtemp(), args, beta=0.0, temperature=1.0)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=conf,
                                      train_dataset=_dataset(tok), processing_class=tok)
    except Exception as err:  # noqa: BLE001 - another TRL/transformers pairing: say so, measure the rest
        raise _Skip(f"DistillationTrainer could not be built: {type(err).__name__}: {err}") from err
    half = args.seq // 2
    inputs = {"prompt_ids": batch["input_ids"][:, :half], "prompt_mask": batch["attention_mask"][:, :half],
              "completion_ids": batch["input_ids"][:, half:], "completion_mask": batch["attention_mask"][:, half:]}
    count = torch.tensor(float(n_tokens))
    return lambda: trainer.compute_loss(student, inputs, num_items_in_batch=count)


# --------------------------------------------------------------------------- measuring


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it resident otherwise, hiding later growth)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the figures then include whatever the allocator kept
        pass


def _mark(torch, cuda: bool) -> float:
    """Reset the peak to the current level and return that level (MiB)."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    _release_free_memory()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    return _rss_mib("VmRSS")


def _peak(torch, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _rss_mib("VmHWM")


def memory_phase(args) -> dict:
    """One variant in this process: the peak memory growth of its first step and of its later steps."""
    fns, skipped, torch = _step_fns(args, [args.phase])
    if args.phase not in fns:
        return {"variant": args.phase, "skipped": skipped.get(args.phase, True)}
    return _measure_memory(args, args.phase, fns[args.phase], torch, first_step=True)


def _measure_memory(args, name: str, step, torch, *, first_step: bool) -> dict:
    cuda = args.device.startswith("cuda")
    base = _mark(torch, cuda)
    losses = [step()]  # allocates AdamW's state (twice the student's parameters): the same in every variant
    first = _peak(torch, cuda) - base
    base = _mark(torch, cuda)
    backward_peaks = []
    losses += [step(after_backward=lambda: backward_peaks.append(_peak(torch, cuda))) for _ in range(args.repeats)]
    out = {"variant": name, "peak_growth_mib": _peak(torch, cuda) - base,
           "forward_backward_growth_mib": max(backward_peaks) - base, "base_mib": base, "losses": losses,
           "memory": "cuda max_memory_allocated" if cuda else "VmHWM - VmRSS (after malloc_trim)"}
    if first_step:
        out["first_step_growth_mib"] = first
    return out


def _memory_processes(args, names: list[str], argv: list[str]) -> dict:
    """Each variant's :func:`memory_phase` in its own process, ``args.jobs`` at a time (a process's peak RSS
    is its own: running them side by side changes no figure, only the wall time)."""
    memory, pending = {}, list(names)
    running: list[tuple[str, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            cmd = [sys.executable, __file__, "--phase", name, *argv]
            running.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        name, proc = running.pop(0)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the memory phase of {name} failed ({proc.returncode}):\n{err[-3000:]}")
        memory[name] = json.loads(out.strip().splitlines()[-1])
    return {name: memory[name] for name in names}


def time_phase(args, names: list[str] | dict) -> tuple[dict, dict]:
    """Every variant in this process, steps interleaved: (wall seconds, CPU seconds) per variant and repeat.

    The CPU time of the process (``time.process_time``, all its threads) is reported beside the wall
    time: on a shared CPU another job's load stretches the wall time of whichever step it overlaps,
    much less the work the step itself does.
    """
    fns = names if isinstance(names, dict) else _step_fns(args, names)[0]
    import torch

    cuda = args.device.startswith("cuda")
    wall: dict[str, list[float]] = {n: [] for n in fns}
    cpu: dict[str, list[float]] = {n: [] for n in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if cuda:
                torch.cuda.synchronize()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def _ratios(memory: dict, seconds: dict, names: list[str], key: str) -> dict[str, float]:
    """Each variant's memory and time over the floor's, and kdlens's memory over TRL's."""
    ran = [n for n in names if not memory[n].get("skipped")]
    out = {}
    if any(key not in memory[n] for n in ran):
        return {}
    for name in ran:
        if name != "floor" and "floor" in ran:
            out[f"{name}_memory_vs_floor"] = memory[name][key] / memory["floor"][key]
            if seconds:
                out[f"{name}_time_vs_floor"] = seconds[name] / seconds["floor"]
    for other in ("trl_gkd", "trl_distill"):
        if "kdlens" in ran and other in ran:
            out[f"kdlens_memory_vs_{other}"] = memory["kdlens"][key] / memory[other][key]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, few repeats: one JSON line in < 1 min")
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--layers", type=int, default=4, help="student = the teacher's prune to this many layers")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=None, help="random teacher with this vocabulary (e.g. 151936)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("no", "bf16"), default="no",
                        help="bf16: forward passes and losses under bf16 autocast (float32 master weights)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--memory", choices=("process", "inline"), default=None,
                        help="process: each variant's memory in its own process (default on CPU, where the "
                             "figure is the process's peak RSS); inline: one after another in this process "
                             "(default on CUDA, where the allocator's counters are exact)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-time", action="store_true",
                        help="memory only (no timed steps): memory does not depend on the machine's load")
    parser.add_argument("--jobs", type=int, default=None,
                        help="memory processes at a time (default 1; --quick: all at once, the models are small)")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.batch, args.seq, args.repeats = 1, 4, 64, 3
        args.vocab = args.vocab or QUICK_VOCAB
    args.jobs = args.jobs or (len(VARIANTS) if args.quick else 1)
    inline = (args.memory or ("inline" if args.device.startswith("cuda") else "process")) == "inline"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.phase:
        print(json.dumps(memory_phase(args)))
        return {}
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    load_before = os.getloadavg()
    memory = {}
    if inline:
        fns, skipped, torch = _step_fns(args, names)
        memory = {n: {"variant": n, "skipped": skipped[n]} for n in skipped}
        for name, step in fns.items():
            memory[name] = _measure_memory(args, name, step, torch, first_step=False)
        wall, cpu = ({}, {}) if args.no_time else time_phase(args, fns)
    else:
        memory = _memory_processes(args, names, argv if argv is not None else sys.argv[1:])
        ran = [n for n in names if not memory[n].get("skipped")]
        wall, cpu = ({}, {}) if args.no_time else time_phase(args, ran)
    seconds = {name: statistics.median(t) for name, t in wall.items()}
    cpu_seconds = {name: statistics.median(t) for name, t in cpu.items()}
    import torch

    result = {"setting": {**{k: getattr(args, k) for k in ("teacher", "layers", "batch", "seq", "vocab", "repeats",
                                                            "device", "precision", "quick")},
                          "memory": "inline" if inline else "process"},
              "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                          "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
              "memory": memory, "seconds": seconds, "cpu_seconds": cpu_seconds, "all_seconds": wall,
              "all_cpu_seconds": cpu}
    result["ratios"] = _ratios(memory, result["seconds"], names, "peak_growth_mib")
    result["cpu_time_ratios"] = {k: v for k, v in _ratios(memory, cpu_seconds, names, "peak_growth_mib").items()
                                 if "time" in k}
    for key in ("first_step_growth_mib", "forward_backward_growth_mib"):
        result[key.replace("growth_mib", "ratios")] = _ratios(memory, {}, names, key)
    ratios = result["ratios"]
    short = {"ratios": {k: round(v, 3) for k, v in ratios.items()}, "setting": result["setting"],
             "cpu_time_ratios": {k: round(v, 3) for k, v in result["cpu_time_ratios"].items()},
             "first_step_ratios": {k: round(v, 3) for k, v in result["first_step_ratios"].items()},
             "skipped": {k: v["skipped"] for k, v in memory.items() if v.get("skipped")},
             "load_avg": result["machine"]["load_avg_after"]}
    print(json.dumps(result if not args.quick else short))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
