"""``seq_kd``: sequence-level knowledge distillation (Kim & Rush, EMNLP 2016).

Before training, the teacher decodes every training prompt — beam search with
``seq_kd.num_beams`` beams (greedy when 1), or sampling with ``seq_kd.do_sample=true`` — and the
student is then trained with cross-entropy on the teacher's outputs instead of the gold responses.
``seq_kd.interpolated=true`` is Kim & Rush's interpolated variant: among the beam's
``num_beams`` candidates, train on the one with the highest sentence BLEU (sacrebleu) against the
gold response (ties go to the higher-ranked beam).

The decodings are cached in the run directory as ``seq_kd_teacher.jsonl`` (one line per example:
its index, a hash of its prompt tokens, the chosen tokens and, for the interpolated variant, the
BLEU of every candidate); the file is rewritten atomically after each decoded batch, so a killed
run resumes decoding where it stopped. ``seq_kd_teacher.meta.json`` records the decoding speed.

Teacher signal: the student never sees the teacher's logits, only its decoded tokens, so the
run-level ``sigma``, ``temperature`` and ``scale_by_temperature_squared`` (which act on the logits
of a KD term) are refused at config time rather than applied to the decoding. A noisier or softer
teacher output is asked for explicitly: ``seq_kd.do_sample=true seq_kd.temperature=T``.

Naming: the kd-generalization ("paradox") paper's code labels as "SeqKD" a token-level forward KL
on the gold sequences. That is ``method=word_kd loss=forward_kl`` in kdlens, not this method.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kdlens._io import atomic_write_json, atomic_write_text, sha256_json
from kdlens.distill._generation import generate_continuations, prompt_ids, stop_ids
from kdlens.distill._methods import SFT, FixedDataRun, RunContext, StepContext
from kdlens.distill._onpolicy import step_seed

__all__ = ["SeqKD", "CACHE_NAME", "best_by_bleu", "decode_training_set"]

CACHE_NAME = "seq_kd_teacher.jsonl"


def best_by_bleu(candidates: Sequence[str], reference: str) -> tuple[int, list[float]]:
    """Index of the candidate with the highest sentence BLEU against ``reference``, and all scores."""
    import sacrebleu

    scores = [float(sacrebleu.sentence_bleu(c, [reference]).score) for c in candidates]
    return max(range(len(scores)), key=lambda i: (scores[i], -i)), scores


def _cut(tokens: Sequence[int], stops: Sequence[int]) -> list[int]:
    """Tokens up to and including the first stop token (what follows is padding)."""
    out = []
    for tok in tokens:
        out.append(int(tok))
        if tok in stops:
            break
    return out


def _decode_batch(ctx: RunContext, prompts: list[list[int]], seed: int) -> list[list[list[int]]]:
    """Candidates (best first) of each prompt: B lists of token lists."""
    scfg = ctx.config.seq_kd
    teacher, tok = ctx.teacher, ctx.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stops = stop_ids(teacher, tok)
    if scfg.do_sample or scfg.num_beams == 1:
        gen = generate_continuations(teacher, prompts, max_new_tokens=scfg.max_new_tokens, pad_token_id=pad,
                                     stop_token_ids=stops, seed=seed, temperature=scfg.temperature,
                                     do_sample=scfg.do_sample, vocab_size=ctx.vocab_size)
        return [[c] for c in gen.continuations()]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(p)
        att[i, width - len(p):] = 1
    n_return = scfg.num_beams if scfg.interpolated else 1
    device = next(teacher.parameters()).device
    with torch.no_grad():
        out = teacher.generate(input_ids=ids.to(device), attention_mask=att.to(device), num_beams=scfg.num_beams,
                               num_return_sequences=n_return, do_sample=False, max_new_tokens=scfg.max_new_tokens,
                               pad_token_id=pad, eos_token_id=stops)
    rows = out[:, width:].cpu().tolist()
    return [[_cut(rows[i * n_return + j], stops) for j in range(n_return)] for i in range(len(prompts))]


def _read_cache(path, features) -> dict[int, dict[str, Any]]:
    if not path.is_file():
        return {}
    done = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            index = int(row["index"])
            tokens = [int(t) for t in row["tokens"]]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number} is not a seq_kd cache line ({err}); delete the file to decode "
                             "again") from err
        if index >= len(features) or row["prompt_sha"] != sha256_json(prompt_ids(features[index])):
            raise ValueError(f"{path}:{number} was decoded for other training data (prompt {index} differs); "
                             "delete the file to decode again")
        if not tokens:
            raise ValueError(f"{path}:{number} has an empty teacher output; delete the file to decode again")
        done[index] = row
    return done


def decode_training_set(ctx: RunContext) -> list[dict[str, list[int]]]:
    """Teacher outputs for every training feature (cached, resumable); returns the new features."""
    scfg = ctx.config.seq_kd
    path = ctx.run.path / CACHE_NAME
    done = _read_cache(path, ctx.features)
    todo = [i for i in range(len(ctx.features)) if i not in done]
    generated, seconds = 0, 0.0
    tok = ctx.tokenizer
    for start in range(0, len(todo), scfg.batch_size):
        chunk = todo[start:start + scfg.batch_size]
        prompts = [prompt_ids(ctx.features[i]) for i in chunk]
        t0 = time.perf_counter()
        candidates = _decode_batch(ctx, prompts, step_seed(ctx.config.seed, chunk[0], "sample"))
        seconds += time.perf_counter() - t0
        for i, cands in zip(chunk, candidates, strict=True):
            row: dict[str, Any] = {"index": i, "prompt_sha": sha256_json(prompt_ids(ctx.features[i]))}
            if len(cands) > 1:
                labels = [t for t in ctx.features[i]["labels"] if t != -100]
                gold = tok.decode(labels, skip_special_tokens=True)
                best, scores = best_by_bleu([tok.decode(c, skip_special_tokens=True) for c in cands], gold)
                row.update(tokens=cands[best], chosen=best, bleu=scores)
            else:
                row["tokens"] = cands[0]
            generated += sum(len(c) for c in cands)
            done[i] = row
        atomic_write_text(path, "".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
    if todo:
        atomic_write_json(ctx.run.path / "seq_kd_teacher.meta.json",
                          {"examples": len(todo), "generated_tokens": generated, "seconds": seconds,
                           "gen_tokens_per_s": generated / max(seconds, 1e-9), "num_beams": scfg.num_beams,
                           "do_sample": scfg.do_sample, "interpolated": scfg.interpolated})
    out = []
    for i, feature in enumerate(ctx.features):
        prompt, tokens = prompt_ids(feature), done[i]["tokens"]
        ids = prompt + tokens
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + tokens})
    return out


@dataclass(frozen=True)
class SeqKD:
    """Sequence-level KD: cross-entropy on the teacher's beam-search (or sampled) outputs.

    Notes
    -----
    Kim & Rush 2016, "Sequence-Level Knowledge Distillation" (seq-KD and seq-inter).
    """

    name: str = "seq_kd"
    needs_teacher: bool = True
    needs_hidden_states: bool = False
    description: str = "sequence-level KD: CE on the teacher's decodings of the training prompts (cached)"
    default_loss: str | None = None
    without_kd_term: str = "trains with cross-entropy on the teacher's decoded text, not on its logits"

    def begin(self, ctx: RunContext) -> FixedDataRun:
        return FixedDataRun(decode_training_set(ctx))

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return SFT()(ctx)
