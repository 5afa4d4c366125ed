"""A teacher behind an HTTP endpoint with log-probabilities: a local server on 127.0.0.1 serves the tiny
model's top-k (started and stopped by each test), against the local teacher and its top-k cache."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from _local_server import LocalServer, read_json, send

from kdlens._http import JSONClient
from kdlens.config import load_config
from kdlens.distill import distill
from kdlens.teacher import TeacherCache, topk_signal
from kdlens.teacher_endpoint import LogprobTeacher

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class ScoringServer(LocalServer):
    """``POST /v1/completions`` scoring the prompt ids with the tiny teacher, as vLLM answers ``echo`` requests.

    style: ``"openai"`` (``logprobs.top_logprobs`` keyed ``"token_id:N"``, the actual token added when
    outside the top-k, as vLLM does), ``"vllm"`` (``prompt_logprobs`` keyed by id), ``"none"`` (no
    logprobs), ``"llamacpp"`` (logprobs of the generated token only). ``max_logprobs`` caps k like
    vLLM's ``--max-logprobs``; ``fail_first`` answers get ``status`` (with ``Retry-After``);
    ``slow_first`` answers wait ``delay`` seconds first.
    """

    def __init__(self, style="openai", *, max_logprobs=100, fail_first=0, status=429, retry_after=None,
                 slow_first=0, delay=0.0, shift=0):
        from kdlens.models import tiny_model

        self.model, _ = tiny_model(seed=0)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = read_json(self)
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    n = len(server.requests)
                if n <= slow_first:
                    time.sleep(delay)
                if n <= fail_first:
                    send(self, status, b'{"error": "busy"}',
                         {"Retry-After": str(retry_after)} if retry_after is not None else None)
                    return
                send(self, 200, server.answer(body, style, max_logprobs, shift))

            def log_message(self, *args):
                pass

        super().__init__(Handler)

    def answer(self, body, style, max_logprobs, shift):
        ids = body["prompt"]
        k = min(body["logprobs"], max_logprobs)
        with torch.no_grad():
            logprobs = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)
        top = [None]
        for i in range(1, len(ids)):
            row = logprobs[i - 1]
            values, indices = row.topk(k)
            entry = {int(t): float(v) for t, v in zip(indices, values, strict=True)}
            entry.setdefault(ids[i], float(row[ids[i]]))  # the actual token, as vLLM adds it
            top.append(entry)
        echoed = [f"token_id:{t + shift}" for t in ids]
        if style == "vllm":
            return {"choices": [{"text": "", "prompt_logprobs": [None if e is None else {
                str(t): {"logprob": v, "rank": 1, "decoded_token": "x"} for t, v in e.items()} for e in top]}]}
        if style == "openai":
            return {"choices": [{"text": "", "logprobs": {
                "tokens": echoed + ["token_id:5"], "token_logprobs": [None] * (len(ids) + 1),
                "top_logprobs": [None if e is None else {f"token_id:{t}": v for t, v in e.items()} for e in top]
                + [{"token_id:5": -0.1}]}}]}
        if style == "llamacpp":
            return {"choices": [{"text": "x", "logprobs": {"tokens": ["x"], "top_logprobs": [{"x": -0.1}]}}]}
        return {"choices": [{"text": "x", "logprobs": None}]}


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "arith.jsonl"
    rows = [{"instruction": f"What is {3 + i} + {7 + 2 * i}?", "input": "",
             "output": f"{3 + i} plus {7 + 2 * i} is {10 + 3 * i}. The answer is {10 + 3 * i}",
             "answer": str(10 + 3 * i)} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A 1-layer prune of tiny, saved: a student with the teacher's tokenizer that is not the teacher."""
    from kdlens.models import prune_layers, tiny_model

    model, tok = tiny_model(seed=0)
    path = tmp_path_factory.mktemp("student")
    prune_layers(model, 1).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _ids():
    from kdlens.models import tiny_tokenizer

    return tiny_tokenizer()("What is 3 + 7? 3 plus 7 is 10.", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("style", ["openai", "vllm"])
def test_endpoint_top_k_equals_the_local_teachers(style, tiny):
    model, _ = tiny
    ids = _ids()
    positions = list(range(len(ids) - 1))
    with ScoringServer(style) as server:
        got = LogprobTeacher(server.url, top_k=8, vocab_size=260).topk(ids, positions)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    local = topk_signal(logits, 8)
    assert torch.equal(got.indices, local.indices)
    # log-probabilities are the logits shifted by their log-normalizer: same distribution
    torch.testing.assert_close(got.values, local.values - logits.logsumexp(-1, keepdim=True), rtol=0, atol=1e-5)
    torch.testing.assert_close(got.residual, local.residual, rtol=1e-5, atol=1e-5)
    request = server.requests[0]
    assert request["path"] == "/v1/completions" and request["prompt"] == ids and request["echo"] is True
    assert request["logprobs"] == 8 and request["max_tokens"] == 1 and request["auth"] is None


def _run_config(tmp_path, tasks_file, student_dir, name, **kw):
    base = dict(student=student_dir, tasks=[tasks_file], method="word_kd", loss="forward_kl", top_k=8, steps=3,
                batch_size=4, lr=1e-2, seed=0, device="cpu", output_dir=str(tmp_path / name),
                cache_dir=str(tmp_path / "cache"))
    return load_config(None, {**base, **kw})


def test_training_from_the_endpoint_equals_training_from_a_local_cache(tmp_path, tasks_file, student_dir, capfd):
    from safetensors.torch import load_file

    local = distill(_run_config(tmp_path, tasks_file, student_dir, "local", teacher="tiny", teacher_source="cache"))
    secret = f"sk-kdlens-test-{uuid.uuid4().hex}"
    with pytest.MonkeyPatch.context() as mp, ScoringServer("openai") as server:
        mp.setenv("KDLENS_TEST_SECRET", secret)
        served = distill(_run_config(tmp_path, tasks_file, student_dir, "served", teacher_source="endpoint",
                                     endpoint={"url": server.url, "model": "tiny", "api_key_env": "KDLENS_TEST_SECRET"}))
    assert len(server.requests) == 8  # one scoring request per training example, none during training
    assert {r["auth"] for r in server.requests} == {f"Bearer {secret}"}
    # the same cache rows: ids exact, log-probabilities = logits - logsumexp, the same tail mass
    a_cache, b_cache = (TeacherCache.open(run.manifest()["teacher_cache"]) for run in (local, served))
    assert torch.equal(a_cache._indices, b_cache._indices)
    torch.testing.assert_close(b_cache._residual, a_cache._residual, rtol=1e-5, atol=1e-5)
    for a, b in zip(local.log(), served.log(), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    wa, wb = load_file(str(local.checkpoint_path / "model.safetensors")), load_file(
        str(served.checkpoint_path / "model.safetensors"))
    # Adam divides by the gradient's own scale, so float rounding of near-zero gradients moves a weight by a
    # small fraction of a step; bound the gap by 0.5 % of the largest possible move (lr x steps = 0.03)
    assert max((wb[key] - wa[key]).abs().max().item() for key in wa) < 0.005 * 1e-2 * 3
    manifest = served.manifest()
    assert manifest["teacher_source"] == "endpoint" and manifest["teacher"] == f"{server.url}#tiny"
    assert manifest["top_k"] == 8
    # the key is in no file the run wrote (run directory, teacher cache) nor in anything it printed
    written = [p for root in (served.path, tmp_path / "cache") for p in root.rglob("*") if p.is_file()]
    assert written and not [p for p in written if secret.encode() in p.read_bytes()]
    out, err = capfd.readouterr()
    assert secret not in out + err


def test_a_server_without_prompt_logprobs_is_a_clear_error(tmp_path, tasks_file, student_dir):
    for style in ("none", "llamacpp"):
        with ScoringServer(style) as server, pytest.raises(ValueError, match="echo=true and logprobs=k.*llama.cpp"):
            distill(_run_config(tmp_path, tasks_file, student_dir, f"bad-{style}", teacher_source="endpoint",
                                endpoint={"url": server.url}))
    with ScoringServer("openai", max_logprobs=4) as server, pytest.raises(ValueError, match="--max-logprobs"):
        LogprobTeacher(server.url, top_k=8, vocab_size=260).topk(_ids(), [0, 1])
    with ScoringServer("openai", shift=1) as server, pytest.raises(ValueError, match="re-tokenized"):
        LogprobTeacher(server.url, top_k=8, vocab_size=260).topk(_ids(), [0])
    with ScoringServer("vllm") as server, pytest.raises(ValueError, match="outside the student's vocabulary of 100"):
        LogprobTeacher(server.url, top_k=8, vocab_size=100).topk(_ids(), [0])


class FakeClock:
    """A monotonic clock that only moves when the client sleeps (records every sleep)."""

    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def sleep(self, seconds):
        self.sleeps.append(round(seconds, 6))
        self.now += seconds

    def __call__(self):
        return self.now


def test_rate_limit_retries_backoff_retry_after_and_timeouts():
    clock = FakeClock()
    with ScoringServer("openai") as server:
        client = JSONClient(server.url + "/completions", requests_per_second=2.0, sleep=clock.sleep, clock=clock)
        teacher = LogprobTeacher(server.url, top_k=4, vocab_size=260, client=client)
        for _ in range(3):
            teacher.topk(_ids(), [0])
    assert clock.sleeps == [0.5, 0.5]  # requests start at most twice a second
    clock = FakeClock()
    with ScoringServer("openai", fail_first=2, status=429, retry_after=3) as server:
        client = JSONClient(server.url + "/completions", retries=2, sleep=clock.sleep, clock=clock)
        LogprobTeacher(server.url, top_k=4, vocab_size=260, client=client).topk(_ids(), [0])
    assert len(server.requests) == 3 and clock.sleeps == [3.0, 3.0]  # the server's Retry-After is honoured
    clock = FakeClock()
    with ScoringServer("openai", fail_first=2, status=503) as server:
        client = JSONClient(server.url + "/completions", retries=2, sleep=clock.sleep, clock=clock)
        LogprobTeacher(server.url, top_k=4, vocab_size=260, client=client).topk(_ids(), [0])
    assert clock.sleeps == [0.5, 1.0]  # exponential backoff
    with ScoringServer("openai", slow_first=1, delay=1.5) as server:  # the first answer is too slow
        client = JSONClient(server.url + "/completions", timeout=0.3, retries=1, sleep=lambda s: None)
        LogprobTeacher(server.url, top_k=4, vocab_size=260, client=client).topk(_ids(), [0])
        assert len(server.requests) == 2
    with ScoringServer("openai", slow_first=5, delay=1.0) as server, \
            pytest.raises(ConnectionError, match=r"failed after 2 attempts .*timed out.*check endpoint.url"):
        LogprobTeacher(server.url, top_k=4, vocab_size=260, timeout=0.2, retries=1).topk(_ids(), [0])
    with ScoringServer("openai", fail_first=9, status=401) as server, pytest.raises(ConnectionError, match="HTTP 401"):
        LogprobTeacher(server.url, top_k=4, vocab_size=260).topk(_ids(), [0])
    assert len(server.requests) == 1  # not retried


def test_endpoint_config_keeps_credentials_out(tmp_path, tasks_file, student_dir):
    for url in ("http://user:pw@127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1?api_key=abc"):
        with pytest.raises(ValueError, match="must not carry credentials"):
            _run_config(tmp_path, tasks_file, student_dir, "x", teacher_source="endpoint", endpoint={"url": url})
    with pytest.raises(ValueError, match="needs the served teacher: endpoint.url="):
        _run_config(tmp_path, tasks_file, student_dir, "x", teacher_source="endpoint")
    with pytest.raises(ValueError, match="set student=NAME_OR_PATH"):
        _run_config(tmp_path, tasks_file, "prune:1", "x", teacher="tiny", teacher_source="endpoint",
                    endpoint={"url": "http://127.0.0.1:9/v1"})
    client = JSONClient("http://127.0.0.1:9/v1/completions", api_key="sk-secret")
    assert "sk-secret" not in repr(client) and "sk-secret" not in repr(LogprobTeacher(
        "http://127.0.0.1:9/v1", top_k=2, vocab_size=10, api_key="sk-secret"))
