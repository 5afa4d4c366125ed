"""A teacher behind an HTTP endpoint that returns log-probabilities: its top-k, stored as a teacher cache.

Served teachers (vLLM, TGI and other OpenAI-compatible servers) can score a *given* sequence: a
``POST /v1/completions`` with the sequence as the prompt (a list of token ids), ``echo: true``,
``logprobs: k`` and ``max_tokens: 1`` answers, for every prompt position, the top-k log-probabilities
of the next token (``choices[0].logprobs.top_logprobs``; vLLM also returns them keyed by token id in
``choices[0].prompt_logprobs``). :class:`LogprobTeacher` turns those into the rows of a
:class:`kdlens.teacher.TeacherCache` (the top-k log-probabilities are the values, whose
log-normalizer is 0; the residual is the mass outside the top-k), so a run reads them exactly like
a cache built from a local teacher: ``teacher_source=endpoint``.

What a server must support:

* **vLLM**: yes. Pass ``--max-logprobs`` >= ``top_k`` (default 20) and, for id-keyed answers,
  ``return_tokens_as_token_ids`` (sent with every request; vLLM then keys ``top_logprobs`` as
  ``"token_id:N"``), or rely on ``prompt_logprobs``.
* **llama.cpp's ``llama-server``**: no. Its ``/v1/completions`` rejects ``echo`` ("Only no echo is
  supported") and returns log-probabilities of generated tokens only, so it cannot score a given
  continuation; kdlens says so when an answer carries no prompt log-probabilities.
* **OpenAI's hosted API**: no (``echo`` with ``logprobs`` is not offered for current models).

The served model must use the student's tokenizer (kdlens sends the student's token ids, checks the
echoed ids when the server returns them, and that every id is inside the student's vocabulary).
The API key is read from the environment variable named in the config (``endpoint.api_key_env``),
sent only in the ``Authorization`` header, and never written (see :mod:`kdlens._http`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kdlens._http import JSONClient, public_url
from kdlens.teacher import TeacherCache, TopK, _log1mexp, cache_key

__all__ = ["LogprobTeacher", "endpoint_cache", "NO_LOGPROBS_HINT"]

#: what to tell a user whose server returns no prompt log-probabilities (which servers can, and how)
NO_LOGPROBS_HINT = (
    "the server must score a given sequence: POST /v1/completions with echo=true and logprobs=k (vLLM does; "
    "llama.cpp's llama-server rejects echo and returns log-probabilities of generated tokens only, OpenAI's "
    "hosted API no longer offers echo with logprobs)"
)
_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


class LogprobTeacher:
    """Top-k next-token log-probabilities of a served teacher on given token sequences.

    Parameters
    ----------
    url : str
        Base URL of the OpenAI-compatible API, e.g. ``"http://127.0.0.1:8000/v1"``; requests go to
        ``{url}/completions``.
    model : str
        The ``model`` field of each request.
    top_k : int
        Log-probabilities kept per position (``logprobs`` of the request).
    vocab_size : int
        The student's logit width: every returned id must be below it.
    api_key : str or None
        Bearer token (read it from the environment; see :meth:`from_config`).
    timeout, retries, requests_per_second
        See ``kdlens._http.JSONClient``.
    token_to_id : mapping, optional
        Token string -> id, to read answers keyed by token strings (the student tokenizer's
        ``get_vocab()``); without it answers must be keyed by ids (``"token_id:N"`` or
        ``prompt_logprobs``).
    client : JSONClient, optional
        A ready client (tests pass one with a fake clock).
    """

    def __init__(self, url: str, *, model: str = "teacher", top_k: int, vocab_size: int, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 2, requests_per_second: float = 0.0,
                 token_to_id: Mapping[str, int] | None = None, client: JSONClient | None = None) -> None:
        if top_k < 1 or vocab_size < 1:
            raise ValueError(f"top_k and vocab_size must be >= 1, got {top_k} and {vocab_size}")
        endpoint = url.rstrip("/") + "/completions"
        self.client = client or JSONClient(endpoint, api_key=api_key, timeout=timeout, retries=retries,
                                           requests_per_second=requests_per_second, what="logprob teacher",
                                           hint="is the server running? check endpoint.url")
        self.model, self.top_k, self.vocab_size = model, min(int(top_k), int(vocab_size)), int(vocab_size)
        self.token_to_id = dict(token_to_id) if token_to_id is not None else None
        self.teacher_id = f"{public_url(url.rstrip('/'))}#{model}"

    @classmethod
    def from_config(cls, endpoint: Any, *, top_k: int, vocab_size: int,
                    token_to_id: Mapping[str, int] | None = None) -> LogprobTeacher:
        """Build from a :class:`kdlens.config.EndpointConfig`, the key from ``endpoint.api_key_env``."""
        key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        return cls(endpoint.url, model=endpoint.model, top_k=top_k, vocab_size=vocab_size, api_key=key or None,
                   timeout=endpoint.timeout, retries=endpoint.retries,
                   requests_per_second=endpoint.requests_per_second, token_to_id=token_to_id)

    def __repr__(self) -> str:
        return f"LogprobTeacher({self.teacher_id!r}, top_k={self.top_k})"

    def _key_to_id(self, key: str) -> int:
        match = _TOKEN_ID.match(key)
        if match:
            return int(match.group(1))
        if key.isdigit():  # vLLM's prompt_logprobs are keyed by the id itself
            return int(key)
        if self.token_to_id is not None and key in self.token_to_id:
            return self.token_to_id[key]
        raise ValueError(f"logprob teacher at {self.client.public} keyed a log-probability by {key!r}, which is not a "
                         "token id; ask for ids (vLLM: return_tokens_as_token_ids, sent with every request) or serve "
                         "a model with the student's tokenizer")

    def _positions(self, choice: Mapping[str, Any],
                   n_prompt: int) -> tuple[list[dict[int, float] | None], list[int] | None]:
        """Per prompt position, id -> logprob (None where the server gives none: position 0), and the
        echoed token ids when the server returned them as ids."""
        raw = choice.get("prompt_logprobs")
        echoed = None
        if isinstance(raw, list) and len(raw) >= n_prompt:
            entries = raw[:n_prompt]
        else:
            logprobs = choice.get("logprobs") or {}
            entries = (logprobs.get("top_logprobs") if isinstance(logprobs, Mapping) else None) or []
            if len(entries) < n_prompt:
                raise ValueError(f"logprob teacher at {self.client.public} returned log-probabilities for "
                                 f"{len(entries)} positions of a {n_prompt}-token sequence: {NO_LOGPROBS_HINT}")
            tokens = logprobs.get("tokens") or []
            matches = [_TOKEN_ID.match(t) for t in tokens[:n_prompt] if isinstance(t, str)]
            if len(matches) == n_prompt and all(matches):
                echoed = [int(m.group(1)) for m in matches]
            entries = entries[:n_prompt]
        out: list[dict[int, float] | None] = []
        for entry in entries:
            if not entry:
                out.append(None)
                continue
            out.append({self._key_to_id(str(key)): float(value["logprob"] if isinstance(value, Mapping) else value)
                        for key, value in entry.items()})
        return out, echoed

    def score(self, input_ids: Sequence[int]) -> list[dict[int, float] | None]:
        """The server's top log-probabilities at every position of ``input_ids``.

        Returns
        -------
        list of dict or None, one per token
            ``result[i]`` maps token ids to ``log p(id | input_ids[:i])`` (at least ``top_k`` of them,
            possibly the actual token as well); None at position 0.

        Raises
        ------
        ValueError
            No prompt log-probabilities in the answer (the server cannot score a given sequence),
            fewer than ``top_k`` per position, ids outside the student's vocabulary, or echoed ids that
            differ from the ones sent.
        """
        ids = [int(i) for i in input_ids]
        answer = self.client.post({"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
                                   "echo": True, "logprobs": self.top_k, "prompt_logprobs": self.top_k,
                                   "return_tokens_as_token_ids": True})
        try:
            choice = answer["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"logprob teacher at {self.client.public} sent no choices: {str(answer)[:300]!r}") from None
        positions, echoed = self._positions(choice, len(ids))
        if echoed is not None and echoed != ids:
            first = next(i for i, (a, b) in enumerate(zip(echoed, ids, strict=True)) if a != b)
            raise ValueError(f"logprob teacher at {self.client.public} echoed token {echoed[first]} at position "
                             f"{first} where {ids[first]} was sent: it re-tokenized the sequence; serve a model with "
                             "the student's tokenizer")
        if all(p is None for p in positions[1:]):
            raise ValueError(f"logprob teacher at {self.client.public} returned no prompt log-probabilities: "
                             f"{NO_LOGPROBS_HINT}")
        for i, entry in enumerate(positions[1:], start=1):
            if entry is None or len(entry) < self.top_k:
                got = 0 if entry is None else len(entry)
                raise ValueError(f"logprob teacher at {self.client.public} returned {got} log-probabilities at position "
                                 f"{i}, fewer than top_k={self.top_k}: lower top_k or raise the server's limit "
                                 "(vLLM: --max-logprobs)")
            bad = [t for t in entry if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"logprob teacher at {self.client.public} returned token id {bad[0]}, outside the "
                                 f"student's vocabulary of {self.vocab_size}: the served model must use the student's "
                                 "tokenizer")
        return positions

    def topk(self, input_ids: Sequence[int], positions: Sequence[int]) -> TopK:
        """Top-k rows at shifted ``positions`` (position p predicts ``input_ids[p + 1]``).

        Returns
        -------
        TopK
            ``values`` [N, k] log-probabilities (descending), ``indices`` [N, k], ``residual`` [N]
            ``log(1 - sum exp(values))`` (``-inf`` when the k entries carry all the mass).
        """
        scored = self.score(input_ids)
        rows = [sorted(scored[p + 1].items(), key=lambda kv: (-kv[1], kv[0]))[:self.top_k] for p in positions]
        values = torch.tensor([[v for _, v in row] for row in rows], dtype=torch.float32).reshape(-1, self.top_k)
        indices = torch.tensor([[t for t, _ in row] for row in rows], dtype=torch.long).reshape(-1, self.top_k)
        return TopK(values=values, indices=indices, residual=_log1mexp(values.logsumexp(-1)))

    def signal(self, features: Sequence[Mapping[str, Sequence[int]]]) -> tuple[TopK, torch.Tensor]:
        """The rows of :meth:`kdlens.teacher.TeacherCache.build_from_signal` for encoded examples (one request each)."""
        parts, lengths = [], []
        for feature in features:
            labels = feature["labels"]
            positions = [i - 1 for i in range(1, len(labels)) if labels[i] != -100]
            parts.append(self.topk(feature["input_ids"], positions))
            lengths.append(len(positions))
        return (TopK(values=torch.cat([p.values for p in parts]), indices=torch.cat([p.indices for p in parts]),
                     residual=torch.cat([p.residual for p in parts])), torch.tensor(lengths, dtype=torch.long))


def endpoint_cache(config: Any, features: Sequence[Mapping[str, Any]], *, data_hash: str, vocab_size: int,
                   root: str | os.PathLike, is_main_process: bool = True, wait=lambda: None,
                   token_to_id: Mapping[str, int] | None = None, progress: bool = False) -> TeacherCache:
    """The teacher cache of a ``teacher_source=endpoint`` run: built from the endpoint once, then reused.

    Parameters
    ----------
    config : DistillConfig
        Uses ``endpoint``, ``top_k``, ``cache_dtype``, ``max_length``.
    features : the run's encoded training examples
    data_hash : str
    vocab_size : int
        The student's logit width.
    root : path
        Root of teacher caches; the cache lives in ``root / cache_key(...)`` keyed by the endpoint's
        public URL and model name (never the key).
    is_main_process, wait
        Only the main process queries the endpoint; ``wait()`` is the barrier before all open it.
    """
    source = LogprobTeacher.from_config(config.endpoint, top_k=config.top_k, vocab_size=vocab_size,
                                        token_to_id=token_to_id)
    # a served teacher has no weights to fingerprint here: its public URL and model name stand for them
    # (a model swapped behind the same URL and name would reuse this cache: say so in the docs)
    path = Path(root) / cache_key(teacher_weights=source.teacher_id, data_hash=data_hash, max_length=config.max_length,
                                  top_k=config.top_k, dtype=config.cache_dtype, vocab_size=vocab_size,
                                  precision="endpoint")
    if is_main_process and not TeacherCache.is_complete(path):
        TeacherCache.build_from_signal(path, signal=source.signal, features=features, top_k=source.top_k,
                                       vocab_size=vocab_size, teacher_weights=source.teacher_id,
                                       teacher_name=source.teacher_id, data_hash=data_hash,
                                       max_length=config.max_length, dtype=config.cache_dtype, progress=progress)
    wait()
    return TeacherCache.open(path, teacher_weights=source.teacher_id, data_hash=data_hash)
