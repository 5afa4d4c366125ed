"""``blackbox``: distillation from a teacher that is only a text generator (an API, a callable).

No logits are needed: the teacher answers every training prompt once, its answers are cached in
the run directory (``blackbox_teacher.jsonl``, rewritten atomically after each batch, so a killed
run resumes where it stopped), and the student is trained with cross-entropy on them (sequence-level
KD on the teacher's text, encoded exactly like a gold rationale).

The teacher is either

* ``blackbox.teacher="package.module:function"``: an importable callable ``prompts -> texts``
  (a list of user-turn strings in, one string per prompt out), or
* ``blackbox.url="http://host:port/v1"``: an OpenAI-compatible chat endpoint
  (``POST {url}/chat/completions``), see :class:`OpenAIChatTeacher`.

With text only there is no teacher logit to add noise to or to soften: ``sigma``, ``temperature``
and ``scale_by_temperature_squared`` (and ``loss``, ``kd_weight``) are refused at config time.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from kdlens._http import JSONClient
from kdlens._io import atomic_write_text, sha256_json
from kdlens.distill._methods import SFT, FixedDataRun, RunContext, StepContext

__all__ = ["BlackBoxKD", "OpenAIChatTeacher", "resolve_teacher", "teacher_features", "CACHE_NAME"]

CACHE_NAME = "blackbox_teacher.jsonl"


class OpenAIChatTeacher:
    """A text-generating teacher behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Parameters
    ----------
    url : str
        Base URL, e.g. ``"http://127.0.0.1:8000/v1"``; requests go to ``{url}/chat/completions``.
    model : str
        The ``model`` field of each request.
    system : str or None
        System message sent before each prompt.
    max_tokens : int
    temperature : float
    timeout : float
        Seconds per HTTP request.
    retries : int
        Extra attempts after a connection error, a timeout or a 408/409/429/5xx answer, with
        exponential backoff (0.5 s, 1 s, 2 s, ...).
    api_key : str or None
        Sent as ``Authorization: Bearer ...`` when given.

    Notes
    -----
    Uses ``kdlens._http.JSONClient`` (standard library only). One request per prompt, in order.
    """

    def __init__(self, url: str, *, model: str = "teacher", system: str | None = None, max_tokens: int = 256,
                 temperature: float = 0.0, timeout: float = 60.0, retries: int = 2,
                 api_key: str | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"black-box teacher url {url!r} must start with http:// or https://")
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model, self.system, self.max_tokens, self.temperature = model, system, max_tokens, temperature
        self.client = JSONClient(self.endpoint, api_key=api_key, timeout=timeout, retries=retries,
                                 what="black-box teacher", hint="is the server running? check blackbox.url")

    def _request(self, prompt: str) -> str:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": prompt}]
        answer = self.client.post({"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                                   "temperature": self.temperature})
        return _content(answer, self.client.public)

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        return [self._request(p) for p in prompts]


def _content(data: Any, endpoint: str) -> str:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as err:
        raise ValueError(f"black-box teacher at {endpoint} sent no choices[0].message.content: "
                         f"{str(data)[:300]!r}") from err
    if not isinstance(content, str):
        raise ValueError(f"black-box teacher at {endpoint} sent non-text content: {content!r}")
    return content


def resolve_teacher(config: Any) -> Callable[[Sequence[str]], list[str]]:
    """The teacher callable of a :class:`kdlens.config.BlackboxConfig` (and the run's system prompt)."""
    bcfg = config.blackbox
    if bcfg.teacher:
        module, _, attr = bcfg.teacher.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"blackbox.teacher={bcfg.teacher!r} is not an importable 'module:callable' "
                             f"({err})") from err
        if not callable(fn):
            raise ValueError(f"blackbox.teacher={bcfg.teacher!r} is not callable")
        return fn
    key = os.environ.get(bcfg.api_key_env) if bcfg.api_key_env else None
    return OpenAIChatTeacher(bcfg.url, model=bcfg.model, system=config.system_prompt, max_tokens=bcfg.max_tokens,
                             temperature=bcfg.temperature, timeout=bcfg.timeout, retries=bcfg.retries, api_key=key)


def _read_cache(path, records) -> dict[int, str]:
    if not path.is_file():
        return {}
    done = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            index, text = int(row["index"]), row["text"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number} is not a blackbox cache line ({err}); delete the file to query "
                             "the teacher again") from err
        if index >= len(records) or row["prompt_sha"] != sha256_json(records[index].prompt):
            raise ValueError(f"{path}:{number} answers another prompt than training example {index}; delete "
                             "the file to query the teacher again")
        done[index] = text
    return done


def teacher_features(ctx: RunContext, teacher: Callable[[Sequence[str]], list[str]]) -> list[dict[str, list[int]]]:
    """Query the teacher for every record (cached, resumable); encode its answers as training data."""
    from kdlens.distill._examples import encode_examples

    cfg = ctx.config
    path = ctx.run.path / CACHE_NAME
    done = _read_cache(path, ctx.records)
    todo = [i for i in range(len(ctx.records)) if i not in done]
    for start in range(0, len(todo), cfg.blackbox.batch_size):
        chunk = todo[start:start + cfg.blackbox.batch_size]
        texts = teacher([ctx.records[i].prompt for i in chunk])
        if not isinstance(texts, (list, tuple)) or len(texts) != len(chunk) \
                or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"the black-box teacher must return one string per prompt: sent {len(chunk)} prompts, "
                             f"got {type(texts).__name__} {str(texts)[:200]}")
        for i, text in zip(chunk, texts, strict=True):
            if not text.strip():
                raise ValueError(f"the black-box teacher returned an empty answer for example "
                                 f"{ctx.records[i].id!r}")
            done[i] = text
        atomic_write_text(path, "".join(json.dumps({"index": i, "prompt_sha": sha256_json(ctx.records[i].prompt),
                                                    "text": done[i]}) + "\n" for i in sorted(done)))
    # the loop's own rules: whole prompts, long answers cut at their end, the rest counted and said
    answered = [replace(record, rationale=done[i]) for i, record in enumerate(ctx.records)]
    return encode_examples(ctx.tokenizer, answered, max_length=cfg.max_length, system=cfg.system_prompt,
                           what="teacher answers").features


@dataclass(frozen=True)
class BlackBoxKD:
    """Black-box KD: cross-entropy on a text-only teacher's answers (callable or chat endpoint)."""

    name: str = "blackbox"
    needs_teacher: bool = False
    needs_hidden_states: bool = False
    description: str = "black-box KD: CE on a text-only teacher's answers (Python callable or OpenAI-compatible URL)"
    default_loss: str | None = None
    without_kd_term: str = "has only its teacher's text, no logits"

    def begin(self, ctx: RunContext) -> FixedDataRun:
        return FixedDataRun(teacher_features(ctx, resolve_teacher(ctx.config)))

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return SFT()(ctx)
