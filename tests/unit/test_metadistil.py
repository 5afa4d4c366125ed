"""MetaDistil on the tiny model: the second-order teacher gradient, the loop wiring, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from kdlens.config import load_config
from kdlens.distill import RunDir, distill
from kdlens.distill.metadistil import MetaDistil, look_ahead, teacher_hypergradient

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="session")
def tasks_file(tmp_path_factory):
    """24 short arithmetic records (byte-level tiny tokenizer: ~20 target tokens each)."""
    path = tmp_path_factory.mktemp("meta-data") / "arith.jsonl"
    rows = [{"instruction": f"What is {3 + i} + {7 + 2 * i}?", "input": "", "output": f"It is {10 + 3 * i}",
             "answer": str(10 + 3 * i)} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def config(tmp_path, tasks_file, name="run", **kw):
    base = dict(teacher="tiny", student="prune:1", tasks=[tasks_file], method="metadistil", steps=3, batch_size=4,
                lr=1e-2, seed=0, device="cpu", output_dir=str(tmp_path / name),
                metadistil={"quiz_size": 8, "quiz_batch_size": 4, "teacher_lr": 1e-3})
    base.update(kw)
    return load_config(None, base)


def _context(cfg, dtype=torch.float64):
    """The RunContext the loop would give MetaDistil.begin, with float64 models."""
    from kdlens.data import encode_for_training, load_tasks
    from kdlens.distill import RunContext
    from kdlens.models import prune_layers, tiny_model

    teacher, tokenizer = tiny_model(seed=0)
    teacher = teacher.to(dtype).eval()
    student = prune_layers(teacher, 1).train()
    with torch.no_grad():  # a student that differs from the teacher's first layer
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=dtype))
    records = load_tasks(cfg.tasks, split="train")
    features = [dict(encode_for_training(tokenizer, r, max_length=64)) for r in records]
    ctx = RunContext(config=cfg, run=RunDir(cfg.output_dir), features=features, records=records, tokenizer=tokenizer,
                     teacher=teacher, vocab_size=260, device=torch.device("cpu"))
    return ctx, student


def test_look_ahead_is_one_differentiable_sgd_step():
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    phi = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    ahead = look_ahead({"w": w}, phi * (w**2).sum(), 0.1)  # grad = 2 * phi * w
    assert torch.allclose(ahead["w"], torch.tensor([1.0 - 0.6, -2.0 + 1.2], dtype=torch.float64))
    # d ahead / d phi = -0.1 * 2 * w: the pilot keeps the teacher in the graph
    (d_phi,) = torch.autograd.grad(ahead["w"].sum(), phi)
    assert float(d_phi) == pytest.approx(-0.2 * (1.0 - 2.0))


def test_teacher_hypergradient_of_a_quadratic_matches_the_closed_form():
    # L_kd(theta, phi) = 1/2 (theta - phi)^2, L_quiz(theta) = 1/2 (theta - c)^2:
    # theta' = theta - eta (theta - phi), d L_quiz(theta') / d phi = (theta' - c) * eta
    theta = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    phi = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    c, eta = 0.5, 0.3
    grads, pilot, quiz = teacher_hypergradient({"t": theta}, [phi], lambda p: 0.5 * (p["t"] - phi) ** 2,
                                               lambda p: 0.5 * (p["t"] - c) ** 2, step_size=eta)
    ahead = 2.0 - eta * (2.0 - (-1.0))
    assert float(grads[0]) == pytest.approx((ahead - c) * eta, rel=1e-12)
    assert float(pilot) == pytest.approx(4.5) and float(quiz) == pytest.approx(0.5 * (ahead - c) ** 2)


@pytest.fixture
def float64_rmsnorm(monkeypatch):
    """Llama's RMSNorm computes in float32 whatever its input: keep float64 for the finite differences
    (its float32 rounding alone moves a central difference at eps = 1e-6 by percents)."""
    from transformers.models.llama import modeling_llama

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


def test_pilot_hypergradient_matches_central_finite_differences_on_the_tiny_model(tmp_path, tasks_file,
                                                                                  float64_rmsnorm):
    """d L_quiz(theta - eta grad_theta L_KD(theta, phi)) / d phi on the real KD loss (tau = 2), float64,
    against central differences of the same function (eps = 1e-6)."""
    cfg = config(tmp_path, tasks_file, temperature=2.0, metadistil={"quiz_size": 8, "quiz_batch_size": 4,
                                                                    "pilot_lr": 0.5})
    ctx, student = _context(cfg)
    run = MetaDistil().begin(ctx)
    batch, indices = run.features[:4], [0, 1, 2, 3]
    grads, _, quiz = run.hypergradient(0, batch, indices, student)
    params = list(ctx.teacher.parameters())
    flat = torch.cat([g.reshape(-1) for g in grads])
    assert float(flat.abs().max()) > 1e-4  # a real signal, far above the differences' error
    # the largest entries and a few random ones, in several parameters
    picks = [int(i) for i in flat.abs().topk(3).indices]
    picks += torch.randint(len(flat), (5,), generator=torch.Generator().manual_seed(0)).tolist()
    offsets = torch.tensor([0] + [p.numel() for p in params]).cumsum(0)
    eps = 1e-6
    for flat_index in picks:
        which = int((offsets[1:] > flat_index).nonzero()[0])
        entry = flat_index - int(offsets[which])
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                params[which].view(-1)[entry] += sign * eps
            values.append(float(run.hypergradient(0, batch, indices, student)[2]))
            with torch.no_grad():
                params[which].view(-1)[entry] -= sign * eps
        numeric = (values[0] - values[1]) / (2 * eps)
        # the differences resolve |L| * 1e-16 / eps ~ 5e-10 absolute
        assert float(flat[flat_index]) == pytest.approx(numeric, rel=1e-6, abs=5e-9)
    assert float(run.hypergradient(0, batch, indices, student)[2]) == float(quiz)  # the teacher was restored


def test_the_pilot_step_honours_the_runs_teacher_noise(tmp_path, tasks_file):
    """sigma reaches the look-ahead's KD loss (and so the teacher's update), as it does the real step."""
    values = {}
    for sigma in (0.0, 3.0):
        cfg = config(tmp_path, tasks_file, sigma=sigma)
        ctx, student = _context(cfg, torch.float32)
        run = MetaDistil().begin(ctx)
        values[sigma] = run.hypergradient(0, run.features[:4], [0, 1, 2, 3], student)
    assert float(values[3.0][1]) > 2 * float(values[0.0][1])  # noisier targets, larger KD loss
    assert not torch.allclose(values[3.0][0][0], values[0.0][0][0])


def test_quiz_set_is_held_out_of_the_training_data(tmp_path, tasks_file):
    cfg = config(tmp_path, tasks_file)
    ctx, _ = _context(cfg, torch.float32)
    run = MetaDistil().begin(ctx)
    assert len(run.quiz) == 8 and len(run.features) == 16
    as_key = [tuple(f["input_ids"]) for f in ctx.features]
    quiz, train = {tuple(f["input_ids"]) for f in run.quiz}, {tuple(f["input_ids"]) for f in run.features}
    assert not quiz & train and quiz | train == set(as_key)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, tasks_file):
    return distill(config(tmp_path_factory.mktemp("metadistil"), tasks_file, steps=4, save_every=2))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_a_run_trains_the_teacher_logs_its_update_and_records_its_settings(uninterrupted):
    run = uninterrupted
    rows = run.log()
    assert [r["teacher_updates"] for r in rows] == [1, 2, 3, 4]
    assert all(r["quiz_loss"] > 0 and r["teacher_grad_norm"] > 0 for r in rows)
    from kdlens.models import tiny_model

    before = tiny_model(seed=0)[0].state_dict()
    after = _weights(run.path / "teacher")
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert "model.embed_tokens.weight" in changed and len(changed) >= len(after) - 2  # rotary buffers aside
    manifest = run.manifest()
    assert manifest["method"] == "metadistil"
    assert manifest["method_settings"] == {"quiz_size": 8, "quiz_batch_size": 4, "teacher_lr": 1e-3, "pilot_lr": None,
                                           "update_every": 1}
    # the meta step differentiates through the student's update: full logits, recorded with the reason
    assert manifest["kd_path"]["path"] == "plain" and "method=metadistil" in manifest["kd_path"]["why"]
    assert not (run.path / "state").exists()


def test_one_step_applies_exactly_one_adamw_teacher_update_before_the_student_step(tmp_path, tasks_file):
    """The teacher saved after a one-step run is the initial teacher moved once by AdamW along the
    hypergradient of step 0's global batch, computed from the initial student."""
    from kdlens.distill import RunContext
    from kdlens.distill._loop import _encode, _epoch_order
    from kdlens.models import prune_layers, tiny_model

    cfg = config(tmp_path, tasks_file, steps=1)
    run = distill(cfg)
    teacher, tokenizer = tiny_model(seed=0)
    teacher.eval()
    student = prune_layers(teacher, 1).train()
    encoded = _encode(cfg, tokenizer)
    features, records = encoded.features, encoded.records
    ctx = RunContext(config=cfg, run=RunDir(tmp_path / "manual"), features=features, records=records,
                     tokenizer=tokenizer, teacher=teacher, vocab_size=260, device=torch.device("cpu"))
    meta = MetaDistil().begin(ctx)
    order = _epoch_order(len(meta.features), cfg.seed, 0)[: cfg.batch_size]
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    meta.prepare_step(step=0, total_steps=2, example_indices=order, features=[meta.features[i] for i in order],
                      student=student)
    saved = _weights(run.path / "teacher")
    for name, param in teacher.named_parameters():
        assert torch.allclose(saved[name], param.detach(), rtol=0, atol=1e-7), name
        assert not torch.equal(before[name], param.detach()), name


def test_a_killed_run_resumes_teacher_and_student_bit_exactly(tmp_path, tasks_file, uninterrupted):
    cfg = config(tmp_path, tasks_file, steps=4, save_every=2)

    class Killed(Exception):
        pass

    def kill(step, logs):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        distill(cfg, callbacks=[kill])
    assert (tmp_path / "run" / "state" / "metadistil" / "step-00000002").is_dir()
    run = distill(cfg)
    for sub in ("checkpoint", "teacher"):
        a, b = _weights(run.path / sub), _weights(uninterrupted.path / sub)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    assert [r["quiz_loss"] for r in run.log()] == [r["quiz_loss"] for r in uninterrupted.log()]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"teacher_source": "cache"}, "teacher_source=online"),
    ({"tasks": ["chain_sum:16"], "metadistil": {"quiz_size": 16}}, "holds out all 16"),
    ({"n_examples": 4, "metadistil": {"quiz_size": 8, "quiz_batch_size": 4}}, "holds out all 4"),
    ({"metadistil": {"quiz_size": 4, "quiz_batch_size": 8}}, "larger than the quiz set"),
    ({"metadistil": {"teacher_lr": 0}}, "teacher_lr must be"),
    ({"metadistil": {"update_every": 0}}, "update_every must be >= 1"),
    ({"teacher": "all-minilm-l6-v2"}, "encoder classifier"),
])
def test_bad_input_is_refused_at_config_time(tmp_path, tasks_file, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, tasks_file, **overrides)
    assert not (tmp_path / "run").exists()


def test_a_quiz_set_as_large_as_the_data_file_is_refused_naming_the_setting(tmp_path, tasks_file):
    with pytest.raises(ValueError, match=r"metadistil.quiz_size=24 holds out all 24"):
        distill(config(tmp_path, tasks_file, metadistil={"quiz_size": 24, "quiz_batch_size": 4}))
    with pytest.raises(ValueError, match="fewer than one batch"):
        distill(config(tmp_path, tasks_file, name="b", batch_size=8, metadistil={"quiz_size": 20}))
