"""Black-box KD against a stub OpenAI-compatible server on 127.0.0.1 (bounded, stops by itself)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest
from _local_server import LocalServer, read_json, send

from kdlens.config import load_config
from kdlens.distill import distill
from kdlens.distill.blackbox import CACHE_NAME, OpenAIChatTeacher, resolve_teacher

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def answer(prompt: str) -> str:
    """The stub teacher: a short rationale ending in the sum of the two numbers of the prompt."""
    a, b = (int(x.strip("?")) for x in prompt.split() if x.strip("?").isdigit())
    return f"Adding gives {a + b}. The answer is {a + b}"


class Stub(LocalServer):
    """A chat-completions server that answers with :func:`answer`; ``fail_first`` requests get ``status``."""

    def __init__(self, fail_first: int = 0, status: int = 503):
        self.requests: list[dict] = []
        self.fail_first, self.status = fail_first, status
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = read_json(self)
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if len(stub.requests) <= stub.fail_first:
                    send(self, stub.status, b'{"error": "busy"}')
                    return
                text = answer(body["messages"][-1]["content"])
                send(self, 200, {"choices": [{"message": {"role": "assistant", "content": text}}]})

            def log_message(self, *args):
                pass

        super().__init__(Handler)


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bb") / "arith.jsonl"
    rows = [{"instruction": f"What is {3 + i} + {7 + 2 * i}?", "input": "", "output": "gold is not used",
             "answer": str(10 + 3 * i)} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def config(tmp_path, tasks_file, **kw):
    base = dict(student="tiny", method="blackbox", tasks=[tasks_file], steps=2, batch_size=4, lr=1e-2, seed=0,
                device="cpu", output_dir=str(tmp_path / "run"), system_prompt="Be brief.")
    base.update(kw)
    return load_config(None, base)


def test_blackbox_distills_from_the_stub_server_and_caches_its_answers(tmp_path, tasks_file, tiny, monkeypatch):
    monkeypatch.setenv("KD_TEST_KEY", "secret")
    with Stub() as stub:
        run = distill(config(tmp_path, tasks_file, blackbox={"url": stub.url, "model": "big", "api_key_env":
                                                             "KD_TEST_KEY", "max_tokens": 32}))
    assert len(stub.requests) == 8  # one request per training prompt, none again during training
    first = stub.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["model"] == "big" and first["max_tokens"] == 32
    assert first["auth"] == "Bearer secret"
    assert first["messages"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "What is 3 + 7?"}]
    cached = [json.loads(x) for x in (run.path / CACHE_NAME).read_text().splitlines()]
    assert [c["text"] for c in cached] == [answer(f"What is {3 + i} + {7 + 2 * i}?") for i in range(8)]
    rows = run.log()
    assert len(rows) == 2 and all(r["batch_source"] == "gold" and r["loss"] == r["ce"] > 0 for r in rows)
    # the student was trained on the teacher's text (+ EOS), not on the gold output
    from kdlens.data import load_task
    from kdlens.distill._methods import RunContext
    from kdlens.distill.blackbox import teacher_features

    _, tok = tiny
    records = load_task(tasks_file, split="train")
    ctx = RunContext(config=load_config(run.config_path), run=run, features=[], records=records, tokenizer=tok,
                     teacher=None, vocab_size=260, device=None)
    features = teacher_features(ctx, lambda prompts: pytest.fail("the cache should answer"))
    target = [t for t in features[0]["labels"] if t != -100]
    assert target[-1] == tok.eos_token_id and answer("What is 3 + 7?") in tok.decode(target)


def test_the_client_retries_busy_answers_and_reports_clear_errors():
    with Stub(fail_first=2, status=503) as stub:
        teacher = OpenAIChatTeacher(stub.url, retries=2, timeout=5)
        assert teacher(["What is 1 + 2?"]) == [answer("What is 1 + 2?")]
        assert len(stub.requests) == 3
    with Stub(fail_first=5, status=400) as stub, pytest.raises(ConnectionError, match="HTTP 400"):
        OpenAIChatTeacher(stub.url, retries=3)(["What is 1 + 2?"])
    assert len(stub.requests) == 1  # a client error is not retried
    with Stub() as stub:
        dead = stub.url
    with pytest.raises(ConnectionError, match="failed after 2 attempts.*blackbox.url"):
        OpenAIChatTeacher(dead, retries=1, timeout=1)(["x"])
    with pytest.raises(ValueError, match="http"):
        OpenAIChatTeacher("127.0.0.1:9/v1")


def test_a_python_callable_teacher(tmp_path, tasks_file, monkeypatch):
    (tmp_path / "my_teacher.py").write_text(
        "calls = []\n"
        "def generate(prompts):\n"
        "    calls.append(list(prompts))\n"
        "    return ['The answer is ' + p.split()[2] for p in prompts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = distill(config(tmp_path, tasks_file, steps=1, blackbox={"teacher": "my_teacher:generate", "batch_size": 3}))
    import my_teacher

    assert [len(c) for c in my_teacher.calls] == [3, 3, 2]  # batched as configured
    cached = [json.loads(x)["text"] for x in (run.path / CACHE_NAME).read_text().splitlines()]
    assert cached[:2] == ["The answer is 3", "The answer is 4"]
    with pytest.raises(ValueError, match="exactly one"):
        config(tmp_path, tasks_file, blackbox={})
    with pytest.raises(ValueError, match="importable"):
        resolve_teacher(config(tmp_path, tasks_file, blackbox={"teacher": "no_such_module:fn"}))
    bad = config(tmp_path, tasks_file, output_dir=str(tmp_path / "bad"),
                 blackbox={"teacher": "my_teacher:calls.__len__"})
    with pytest.raises(ValueError, match="importable|one string per prompt"):
        distill(bad)
