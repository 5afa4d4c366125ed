"""Pre-flight checks (issue 12): each passes on a sound run and fails on the bug it is there to catch."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from test_distill_generation import config

from kdlens import losses as L
from kdlens.distill import distill
from kdlens.distill._preflight import (
    check_descent,
    check_self_divergence,
    check_teacher_nll,
    check_tokenizers,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def cfg(loss="forward_kl", temperature=1.0, **kw):
    return SimpleNamespace(loss=loss, loss_params=kw, temperature=temperature, scale_by_temperature_squared=False,
                           cache_tail="uniform")


def rows(seed=0, n=6, v=11, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale, torch.randn(n, v, generator=g) * scale


# ---------------------------------------------------------------- broken losses, as peers shipped them


def tau_on_the_student_only(student_logits, teacher_logits, *, mask=None, temperature=1.0,
                            scale_by_temperature_squared=False, reduction="none"):
    """Forward KL that softens the student but not the teacher."""
    return L.forward_kl(student_logits / temperature, teacher_logits, mask=mask, reduction=reduction)


def jsd_mixed_in_probability_space(student_logits, teacher_logits, *, mask=None, temperature=1.0,
                                   scale_by_temperature_squared=False, reduction="none", beta=0.5):
    """JSD with ``log m`` taken as ``log(beta p + (1 - beta) q)`` of float32 probabilities: 0 * log 0 = NaN."""
    p = torch.softmax(teacher_logits.float() / temperature, -1)
    q = torch.softmax(student_logits.float() / temperature, -1)
    m = beta * p + (1 - beta) * q
    value = beta * (p * (p.log() - m.log())).sum(-1) + (1 - beta) * (q * (q.log() - m.log())).sum(-1)
    return value if mask is None else value * mask


def maximised_kl(student_logits, teacher_logits, **kw):
    """A sign error: the loss rises as the student copies the teacher."""
    return -L.forward_kl(student_logits, teacher_logits, **kw)


def detached_student(student_logits, teacher_logits, **kw):
    """The student side detached (the gradient goes nowhere): the value falls, its gradient says nothing."""
    return L.forward_kl(student_logits.detach(), teacher_logits, **kw) + 0.0 * student_logits.sum(-1)


# ---------------------------------------------------------------- the checks on their own


def test_self_divergence_is_zero_for_every_catalogue_loss_and_not_for_broken_ones():
    _, t = rows()
    for name, entry in L.LOSSES.items():
        report = check_self_divergence(L.get_loss(name), t, cfg(name, temperature=2.0), vocab=11)
        assert report["ok"] and (report["applies"] == entry.zero_at_equality)
    bad = check_self_divergence(tau_on_the_student_only, t, cfg(temperature=2.0), vocab=11)
    assert not bad["ok"] and bad["value"] > 1e-2
    gapped = t.clone()
    gapped[:, 0] = 200.0  # the other entries' probabilities underflow to 0 in float32
    assert check_self_divergence(L.get_loss("jsd"), gapped, cfg("jsd"), vocab=11)["ok"]
    bad = check_self_divergence(jsd_mixed_in_probability_space, gapped, cfg("jsd"), vocab=11)
    assert not bad["ok"] and math.isnan(bad["value"])


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_every_catalogue_loss_falls_toward_the_teacher(name):
    s, t = rows(1)
    report = check_descent(L.get_loss(name), s, t, cfg(name, temperature=1.5))
    assert report["ok"], report
    assert report["loss_after_step"] < report["loss"] and report["slope"] < 0


@pytest.mark.parametrize("broken", [maximised_kl, detached_student], ids=lambda f: f.__name__)
def test_descent_fails_for_a_sign_error_and_a_detached_student(broken):
    s, t = rows(2)
    report = check_descent(broken, s, t, cfg())
    assert not report["ok"]
    if broken is detached_student:  # the value still falls; only the gradient check sees it
        assert report["loss_after_step"] < report["loss"] and report["slope"] == 0.0


def test_descent_does_not_apply_to_a_student_that_is_its_teacher():
    _, t = rows(3)
    assert check_descent(L.forward_kl, t, t.clone(), cfg()) == {
        "ok": True, "applies": False, "why": "the student's logits equal the teacher's", "loss": 0.0}


def test_tokenizers_that_agree_and_one_with_another_pad_token(tiny):
    from kdlens.data import load_task

    _, tok = tiny
    records = load_task("chain_sum:4", split="train")
    assert check_tokenizers(tok, tok, records) == {"ok": True, "differs": {}, "examples": 4}
    other = copy.deepcopy(tok)
    other.pad_token = other.convert_ids_to_tokens(5)
    report = check_tokenizers(other, tok, records)
    assert not report["ok"] and set(report["differs"]) == {"pad_token_id"}
    templated = copy.deepcopy(tok)
    templated.chat_template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
    templated.padding_side = "left" if tok.padding_side == "right" else "right"
    report = check_tokenizers(templated, tok, records)
    assert {"chat_template", "padding_side", "encoding"} <= set(report["differs"])


def test_teacher_nll_names_a_teacher_worse_than_the_student():
    labels = torch.tensor([[-100, -100, 3, 4, 1]])
    gold = torch.full((1, 4, 6), -5.0)
    for t, nxt in enumerate([-100, 3, 4, 1]):
        if nxt != -100:
            gold[0, t, nxt] = 5.0
    uniform = torch.zeros(1, 4, 6)
    assert check_teacher_nll(gold, uniform, labels, vocab=6)["ok"]
    worse = check_teacher_nll(uniform, gold, labels, vocab=6)
    assert not worse["ok"] and worse["teacher"] == pytest.approx(math.log(6)) and worse["tokens"] == 3


# ---------------------------------------------------------------- in a run


def _run_config(tmp_path, tasks, name, **kw):
    return config(tmp_path, tasks, name, **{"steps": 1, **kw})


def test_a_sound_run_records_every_check_in_its_manifest(tmp_path, arith_tasks):
    checks = distill(_run_config(tmp_path, arith_tasks, "ok", loss="jsd", beta=0.9, temperature=2.0)).manifest()[
        "preflight"]
    assert checks["self_divergence"] == {"ok": True, "applies": True, "value": 0.0}
    assert checks["descent"]["ok"] and checks["descent"]["slope"] < 0
    assert checks["tokenizers"]["ok"] and checks["teacher_nll"]["tokens"] > 0
    assert set(checks) == {"self_divergence", "descent", "tokenizers", "teacher_nll", "warnings"}


def test_a_broken_loss_stops_the_run_before_its_first_step(tmp_path, arith_tasks, monkeypatch):
    import kdlens.losses

    monkeypatch.setattr(kdlens.losses, "get_loss", lambda name, **params: tau_on_the_student_only)
    with pytest.raises(ValueError, match=r"pre-flight: loss=forward_kl .* against itself is .*, not 0"):
        distill(_run_config(tmp_path, arith_tasks, "tau", temperature=2.0))
    monkeypatch.setattr(kdlens.losses, "get_loss", lambda name, **params: maximised_kl)
    with pytest.raises(ValueError, match="does not fall when the student moves toward the teacher"):
        distill(_run_config(tmp_path, arith_tasks, "sign"))
    assert not (tmp_path / "sign" / "train_log.jsonl").exists() or \
        (tmp_path / "sign" / "train_log.jsonl").read_text() == ""


def test_a_teacher_worse_than_its_student_is_a_warning_naming_it(tmp_path, arith_tasks, caplog):
    """A student fine-tuned on the task, distilled from the untrained teacher (a task-unaware one)."""
    sft = distill(_run_config(tmp_path, arith_tasks, "sft", method="sft", teacher=None, student="tiny", steps=8,
                              lr=3e-2))
    with caplog.at_level("WARNING", logger="kdlens.distill"):
        run = distill(_run_config(tmp_path, arith_tasks, "kd", student=str(sft.path)))
    nll = run.manifest()["preflight"]["teacher_nll"]
    assert not nll["ok"] and nll["teacher"] > nll["student"]
    assert "a task-unaware or broken teacher" in caplog.text
    assert run.done  # a warning, not an error


# ---------------------------------------------------------------- no false alarm on a sound loss (review of issue 12)


@pytest.mark.parametrize("case", ["jsd saturated", "skew alpha=1", "student = teacher up to rounding"])
def test_a_flat_loss_is_recorded_as_not_applying_not_as_broken(case):
    t = torch.zeros(2, 11)
    t[:, 0] = 30.0
    s = torch.zeros(2, 11)
    s[:, 1] = 30.0  # two confident models that disagree: JSD sits at its maximum, log 2
    if case == "jsd saturated":
        report = check_descent(L.get_loss("jsd"), s, t, cfg("jsd", temperature=0.25))
    elif case == "skew alpha=1":
        report = check_descent(L.get_loss("skew_forward_kl", alpha=1.0), s, t, cfg("skew_forward_kl", alpha=1.0))
    else:
        s, t = rows(0)
        report = check_descent(L.forward_kl, t + 1e-7 * s, t, cfg())
    assert report["ok"] and report["applies"] is False and "flat" in report["why"], report
    assert abs(report["slope"]) <= 1e-9 and abs(report["finite_difference"]) <= 1e-9


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits)


def _preflight_on(loss, student_logits, teacher_logits):
    """:func:`preflight` on one batch whose student and teacher logits are given ([B, T, V])."""
    from kdlens.distill._preflight import preflight

    b, t, v = student_logits.shape
    labels = torch.full((b, t), 1)
    labels[:, 0] = -100
    features = [{"input_ids": [1] * t, "attention_mask": [1] * t, "labels": labels[i].tolist()} for i in range(b)]

    def collate(feats):
        return {k: torch.tensor([f[k] for f in feats]) for k in ("input_ids", "attention_mask", "labels")}

    def teacher_fn(batch, example_indices):
        return SimpleNamespace(logits=teacher_logits[:, :-1])

    config = SimpleNamespace(loss=loss, loss_params={}, temperature=1.0, scale_by_temperature_squared=False,
                             cache_tail="uniform", batch_size=b, system_prompt=None)
    return preflight(config, student=_FixedLogits(student_logits), teacher_fn=teacher_fn,
                     loss_fn=L.get_loss(loss), tokenizer=None, teacher_tokenizer=None, features=features, records=[],
                     collate=collate, vocab=v, device=torch.device("cpu"), log=False)


@pytest.mark.parametrize("loss", ["mse_soft", "l2_soft"])
def test_a_loss_on_probabilities_that_rises_along_the_logit_line_is_a_warning_not_an_error(loss):
    """Far from its teacher (logits of scale 8), moving the student's logits toward the teacher's raises
    the squared error of the probabilities: a property of the loss, not a bug, so the run goes on."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 11, generator=g) * 8, torch.randn(4, 11, generator=g) * 8
    assert not check_descent(L.get_loss(loss), s, t, cfg(loss))["ok"]  # it does rise there
    report = _preflight_on(loss, s[:, None].expand(4, 2, 11).contiguous(), t[:, None].expand(4, 2, 11).contiguous())
    assert not report["descent"]["ok"] and report["descent"]["slope"] > 0
    assert any(f"loss={loss}" in w and "need not fall" in w for w in report["warnings"])
    kl = _preflight_on("forward_kl", s[:, None].expand(4, 2, 11).contiguous(), t[:, None].expand(4, 2, 11).contiguous())
    assert kl["descent"]["ok"] and kl["descent"]["slope"] < 0 and kl["warnings"] == []  # KL does fall there
