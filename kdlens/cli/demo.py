"""``kdlens demo``: the embedded teacher answers one GSM8K test question.

The question comes from ``kd-generalization/math-test/gsm8k.json`` in the shared data (``$KDLENS_SHARED_DATA``,
or ``../shared/data`` beside the kdlens checkout); without it, from a built-in GSM8K-style question.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["add_parser", "run", "find_gsm8k", "demo_record"]

_GSM8K = Path("kd-generalization") / "math-test" / "gsm8k.json"

# used when the shared data is absent: written for kdlens (12 * (4 + 3) - 9 = 75)
_BUILTIN_QUESTION = {
    "prompt": "A baker makes 12 muffins in each batch. She bakes 4 batches in the morning and 3 batches in "
              "the afternoon. At the end of the day she has sold all but 9 muffins. How many muffins did she sell?",
    "answer": "75",
}


def find_gsm8k() -> Path | None:
    """The shared GSM8K test file: under ``$KDLENS_SHARED_DATA`` (the folder holding ``kd-generalization/``,
    or that folder itself), else ``shared/data`` next to the kdlens checkout; None when absent."""
    candidates = []
    env = os.environ.get("KDLENS_SHARED_DATA")
    if env:
        root = Path(env).expanduser()
        candidates += [root / _GSM8K, root / _GSM8K.relative_to("kd-generalization")]
    checkout = Path(__file__).resolve().parents[2]
    candidates.append(checkout.parent / "shared" / "data" / _GSM8K)
    return next((path for path in candidates if path.is_file()), None)


def demo_record(index: int = 0):
    """The demo question as a :class:`kdlens.data.Record`, and where it came from."""
    from kdlens.data import Record, load_task

    path = find_gsm8k()
    if path is None:
        record = Record(id="kdlens-demo-0", task="gsm8k", split="test", prompt=_BUILTIN_QUESTION["prompt"],
                        answer=_BUILTIN_QUESTION["answer"], meta={"answer_kind": "numeric"})
        return record, "built-in question (shared data not found; set KDLENS_SHARED_DATA)"
    records = load_task(str(path), split="test")
    if not 0 <= index < len(records):
        raise ValueError(f"--index {index} is out of range: {path} has {len(records)} questions")
    return records[index], f"{path} #{index}"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="the embedded teacher answers one GSM8K test question",
        description="Load the embedded SmolLM2-135M-Instruct teacher (converted into the cache on first use) "
                    "and print its greedy answer to a GSM8K test question, the extracted number and the gold one.",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="built-in name, local directory, .gguf file or hub id (default: %(default)s)")
    parser.add_argument("--index", type=int, default=0, help="which GSM8K test question (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generation budget (default: %(default)s)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    record, source = demo_record(args.index)
    print(f"kdlens demo: loading {args.model} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()

    import torch
    from transformers import TextStreamer

    from kdlens.data import encode_for_generation, score
    from kdlens.models import load_model

    model, tokenizer = load_model(args.model)
    print(f"kdlens demo: loaded in {time.perf_counter() - started:.1f} s; generating (greedy, at most "
          f"{args.max_new_tokens} tokens)", file=sys.stderr, flush=True)
    print(f"Question ({source}):\n{record.prompt}\n")
    print("Answer:", flush=True)
    prompt = torch.tensor([encode_for_generation(tokenizer, record)])
    # on a terminal, show the answer as it is generated; otherwise print it once at the end
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if sys.stdout.isatty() else None
    with torch.no_grad():
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                max_new_tokens=args.max_new_tokens, streamer=streamer,
                                pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(output[0, prompt.shape[1]:], skip_special_tokens=True).strip()
    if streamer is None:
        print(text)
    predicted, correct = score(text, record)
    print(f"\nExtracted answer: {predicted}   Gold: {record.answer}   Correct: {'yes' if correct else 'no'}")
    return 0
