"""Throughput of ``kdlens.eval`` with the embedded SmolLM2-135M-Instruct: examples/s and generated tokens/s.

Four phases, each timed on its own after one untimed warm-up batch:

* ``generate``  batched greedy decoding with the KV cache (``kdlens.eval.generate``, left padding);
* ``hf_generate`` the same batches through ``transformers``' ``model.generate`` (a reference point);
* ``evaluate``  the whole ``evaluate`` call: generation + scoring + the teacher-forced gold NLL pass;
* ``tokens``    ``collect_tokens`` of a 10-layer pruned student against the teacher on the teacher's outputs.

Prompts are the first ``--n / 2`` items of GSM8K and of SVAMP (paradox-paper test sets), longest
first as ``evaluate`` orders them. Prints one JSON object per phase and a Markdown table row set.

Usage::

    python benchmarks/bench_eval.py --n 16 --batch-size 8 --max-new-tokens 64 --threads 1

On a CPU shared with other jobs use ``--threads 1``: with more threads than free cores, OpenMP
spin-waiting made a SmolLM2 decode step 15x slower here (3.5 s instead of 0.23 s at batch 8).
    python benchmarks/bench_eval.py --device cuda --n 64 --batch-size 32 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kd-generalization" / "math-test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="examples in all (half GSM8K, half SVAMP)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with gsm8k.json and SVAMP.json")
    parser.add_argument("--skip-tokens", action="store_true", help="do not time collect_tokens")
    parser.add_argument("--skip-hf", action="store_true", help="do not time transformers' generate (the reference)")
    args = parser.parse_args()

    import torch

    from kdlens.data import encode_for_generation, load_task
    from kdlens.eval import collect_tokens, evaluate, generate
    from kdlens.models import load_model, prune_layers

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model("smollm2-135m-instruct", device=args.device)
    half = args.n // 2
    tasks = {"gsm8k": load_task(str(args.data / "gsm8k.json"), n=half),
             "SVAMP": load_task(str(args.data / "SVAMP.json"), n=args.n - half)}
    records = [r for rs in tasks.values() for r in rs]
    prompts = sorted((encode_for_generation(tokenizer, r) for r in records), key=len, reverse=True)
    meta = {"device": args.device, "threads": torch.get_num_threads(), "n": len(records),
            "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
            "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1),
            "load_avg_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__}

    generate(model, tokenizer, prompts[: args.batch_size], max_new_tokens=4)  # warm-up
    start = time.perf_counter()
    generated = 0
    for i in range(0, len(prompts), args.batch_size):
        outs = generate(model, tokenizer, prompts[i:i + args.batch_size], max_new_tokens=args.max_new_tokens)
        generated += sum(len(o.token_ids) for o in outs)
    seconds = time.perf_counter() - start
    results = [{"phase": "generate", "seconds": round(seconds, 2), "examples_per_s": round(len(prompts) / seconds, 3),
                "generated_tokens_per_s": round(generated / seconds, 1), "generated_tokens": generated, **meta}]

    if not args.skip_hf:
        # reference point: transformers' own generate on the same left-padded batches
        pad = tokenizer.pad_token_id
        eos = tokenizer.eos_token_id
        start = time.perf_counter()
        hf_generated = 0
        for i in range(0, len(prompts), args.batch_size):
            chunk = prompts[i:i + args.batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk], device=args.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=args.device)
            with torch.no_grad():
                new = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                     max_new_tokens=args.max_new_tokens, pad_token_id=pad)[:, width:].tolist()
            hf_generated += sum(row.index(eos) + 1 if eos in row else len(row) for row in new)
        seconds = time.perf_counter() - start
        results.append({"phase": "hf_generate", "seconds": round(seconds, 2),
                        "examples_per_s": round(len(prompts) / seconds, 3),
                        "generated_tokens_per_s": round(hf_generated / seconds, 1),
                        "generated_tokens": hf_generated, **meta})

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        table = evaluate({"teacher": (model, tokenizer)}, tasks, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, output_dir=out)
        seconds = time.perf_counter() - start
    tokens_out = int(table["n_output_tokens"].sum())
    results.append({"phase": "evaluate", "seconds": round(seconds, 2), "examples_per_s": round(len(table) / seconds, 3),
                    "generated_tokens_per_s": round(tokens_out / seconds, 1), "generated_tokens": tokens_out,
                    "accuracy": round(float(table["correct"].mean()), 3), **meta})

    if not args.skip_tokens:
        student = (prune_layers(model, 10), tokenizer)
        teacher_rows = table[table["sample"] == 0]
        start = time.perf_counter()
        tokens = collect_tokens(student, (model, tokenizer), teacher_rows, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        results.append({"phase": "tokens", "seconds": round(seconds, 2),
                        "examples_per_s": round(len(teacher_rows) / seconds, 3),
                        "token_rows_per_s": round(len(tokens) / seconds, 1), "token_rows": len(tokens), **meta})

    for result in results:
        print(json.dumps(result))
    print("\n| phase | examples/s | tokens/s | seconds |\n|---|---|---|---|")
    for r in results:
        rate = r.get("generated_tokens_per_s", r.get("token_rows_per_s"))
        print(f"| {r['phase']} | {r['examples_per_s']} | {rate} | {r['seconds']} |")


if __name__ == "__main__":
    main()
