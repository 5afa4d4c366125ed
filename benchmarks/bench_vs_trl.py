"""kdlens's word-level KD step against TRL's distillation trainers and against the floor.

Variants (same teacher, student, batch, precision; forward KL, temperature 1, pure KD):

* ``floor``        a teacher forward under no_grad plus one SFT step of the student: the work a KD
                   step cannot avoid;
* ``kdlens``       one step of the engine as a run does it: the loop's teacher signal
                   (``kdlens.distill._loop._make_teacher_fn``) and ``METHODS["word_kd"]``, AdamW;
* ``trl_gkd``      ``trl.experimental.gkd.GKDTrainer.compute_loss`` with lambda = 0, beta = 0 (forward
                   KL), then backward and AdamW;
* ``trl_distill``  ``trl.DistillationTrainer``'s loss (its chunked divergence over the two lm-heads)
                   with beta = 0 on the batch's second half as the completion (that trainer
                   generates its completions on-policy; here it scores the given ones, so only
                   the loss path is compared), then backward and AdamW, where the installed TRL
                   has it.

Memory: each variant runs in its own process; the figure is the growth of the process's peak
resident memory (``VmHWM``, reset through ``/proc/self/clear_refs`` after setup) over its resident
memory after setup (models loaded, optimizer built, batch on the device), over ``--repeats`` steps
that start with the first (the optimizer's state is allocated there, the same for every variant).
On CUDA: ``torch.cuda.max_memory_allocated`` growth over the allocation after setup.

Time: all variants in one process, steps interleaved round-robin after one warm-up step each, the
median per variant, so a shared machine's load falls on every variant alike.

Usage::

    python benchmarks/bench_vs_trl.py --quick                      # tiny models, one JSON line, < 1 min
    python benchmarks/bench_vs_trl.py --layers 4 --batch 4 --seq 128 --repeats 5
    python benchmarks/bench_vs_trl.py --vocab 151936 --layers 4     # Qwen2.5's vocabulary, random weights

TRL is an optional extra (``pip install -e .[bench]``); the variants it needs are skipped with a
note when it is absent.
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
VARIANTS = ("floor", "kdlens", "trl_gkd", "trl_distill")


# --------------------------------------------------------------------------- models and batch


def _models(args):
    """(teacher, student, tokenizer) on ``args.device``: SmolLM2 (or the tiny model) and a layer prune."""
    import torch

    from kdlens.models import load_model, prune_layers

    if args.quick:
        from kdlens.models import tiny_model

        teacher, tok = tiny_model(n_layers=2, seed=0) if args.vocab is None else _random_teacher(args, tok=None)
    elif args.vocab is not None:
        teacher, tok = _random_teacher(args, tok=None)
    else:
        teacher, tok = load_model(args.teacher)
    torch.manual_seed(0)
    student = prune_layers(teacher, args.layers)
    teacher.requires_grad_(False)
    return teacher.to(args.device).eval(), student.to(args.device).train(), tok


def _random_teacher(args, tok):
    """A randomly initialised teacher with the SmolLM2 architecture and ``args.vocab`` tokens (no download)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdlens.models import load_model

    _, tok = load_model("tiny")  # token ids are drawn at random below; only the pad id is read
    base = load_model(args.teacher)[0].config if not args.quick else None
    if base is None:
        config = AutoConfig.for_model("llama", vocab_size=args.vocab, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    else:
        config = base.__class__.from_dict({**base.to_dict(), "vocab_size": args.vocab})
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
    fns = {}
    for name in names:
        make = {"floor": _floor, "kdlens": _kdlens, "trl_gkd": _trl_gkd, "trl_distill": _trl_distill}[name]
        fn = make(args, teacher, student, tok, batch, n_tokens, vocab)
        if fn is None:
            continue

        def step(fn=fn):
            loss = fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())

        fns[name] = step
    return fns, torch


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


def _kdlens(args, teacher, student, tok, batch, n_tokens, vocab):
    from accelerate import Accelerator

    from kdlens.config import DistillConfig
    from kdlens.distill import METHODS, StepContext
    from kdlens.distill._loop import _make_teacher_fn
    from kdlens.losses import get_loss

    cfg = DistillConfig(teacher="t", student="prune:1", tasks=["x"], method="word_kd", loss="forward_kl")
    accelerator = Accelerator(cpu=not args.device.startswith("cuda"))
    teacher_fn = _make_teacher_fn(teacher, None, vocab, accelerator)
    ctx = StepContext(student=student, batch=batch, example_indices=list(range(args.batch)), n_tokens=n_tokens,
                      config=cfg, teacher=teacher_fn, loss_fn=get_loss("forward_kl"), vocab_size=vocab)
    return lambda: METHODS["word_kd"](ctx)["loss"]


def _trl_args(cls, tmp: str, **extra):
    # dropout stays as the model config says, as in a kdlens run (TRL turns it off by default)
    return cls(output_dir=tmp, report_to=[], use_cpu=True, per_device_train_batch_size=1, logging_steps=1000,
               save_strategy="no", disable_dropout=False, **extra)


def _dataset(tok):
    from datasets import Dataset

    return Dataset.from_list([{"messages": [{"role": "user", "content": "1+1?"},
                                            {"role": "assistant", "content": "2"}]}])


def _trl_gkd(args, teacher, student, tok, batch, n_tokens, vocab):
    import tempfile

    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError as err:
        print(f"trl_gkd skipped: {err} (pip install -e .[bench])", file=sys.stderr)
        return None
    conf = _trl_args(GKDConfig, tempfile.mkdtemp(), lmbda=0.0, beta=0.0, temperature=1.0, max_length=args.seq)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=conf, train_dataset=_dataset(tok),
                         processing_class=tok)
    return lambda: trainer.compute_loss(student, batch, num_items_in_batch=n_tokens)


def _trl_distill(args, teacher, student, tok, batch, n_tokens, vocab):
    import tempfile

    import torch

    try:
        from trl import DistillationConfig, DistillationTrainer
    except ImportError as err:
        print(f"trl_distill skipped: {err} (pip install -e .[bench])", file=sys.stderr)
        return None
    tok.padding_side = "left"
    conf = _trl_args(DistillationConfig, tempfile.mkdtemp(), beta=0.0, temperature=1.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=conf,
                                  train_dataset=_dataset(tok), processing_class=tok)
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


def memory_phase(args) -> dict:
    """One variant in this process: peak memory growth over the state after setup."""
    fns, torch = _step_fns(args, [args.phase])
    if args.phase not in fns:
        return {"variant": args.phase, "skipped": True}
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_mib("VmRSS")
    losses = [fns[args.phase]() for _ in range(args.repeats)]
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mib("VmHWM")
    return {"variant": args.phase, "peak_growth_mib": peak - base, "base_mib": base, "losses": losses,
            "memory": "cuda max_memory_allocated" if cuda else "VmHWM - VmRSS after setup"}


def time_phase(args, names) -> dict:
    """Every variant in this process, steps interleaved; median seconds per variant."""
    fns, torch = _step_fns(args, names)
    cuda = args.device.startswith("cuda")
    times: dict[str, list[float]] = {n: [] for n in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()} | {"_all": times}


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
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.batch, args.seq, args.repeats = 1, 2, 32, min(args.repeats, 3)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.phase:
        print(json.dumps(memory_phase(args)))
        return {}
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    memory = {}
    for name in names:
        cmd = [sys.executable, __file__, "--phase", name, *(argv if argv is not None else sys.argv[1:])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        memory[name] = json.loads(out.stdout.strip().splitlines()[-1])
    seconds = time_phase(args, [n for n in names if not memory[n].get("skipped")])
    result = {"setting": {k: getattr(args, k) for k in ("teacher", "layers", "batch", "seq", "vocab", "repeats",
                                                         "device", "quick")},
              "memory": memory, "seconds": {k: v for k, v in seconds.items() if not k.startswith("_")}}
    floor_mem = memory.get("floor", {}).get("peak_growth_mib")
    floor_s = result["seconds"].get("floor")
    ratios = {}
    for name in names:
        if name == "floor" or memory[name].get("skipped"):
            continue
        if floor_mem:
            ratios[f"{name}_memory_vs_floor"] = memory[name]["peak_growth_mib"] / floor_mem
        if floor_s:
            ratios[f"{name}_time_vs_floor"] = result["seconds"][name] / floor_s
    if "kdlens" in memory and "trl_gkd" in memory and not memory["trl_gkd"].get("skipped"):
        ratios["kdlens_memory_vs_trl_gkd"] = memory["kdlens"]["peak_growth_mib"] / memory["trl_gkd"]["peak_growth_mib"]
    if "kdlens" in memory and "trl_distill" in memory and not memory["trl_distill"].get("skipped"):
        ratios["kdlens_memory_vs_trl_distill"] = (memory["kdlens"]["peak_growth_mib"]
                                                  / memory["trl_distill"]["peak_growth_mib"])
    result["ratios"] = ratios
    print(json.dumps(result if not args.quick else {"ratios": ratios, "setting": result["setting"]}))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
