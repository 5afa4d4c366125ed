"""Every method honours every teacher-signal setting (sigma, tau, the tau^2 switch) or refuses it at
config time (issue 12, item 3): a one-step run per method and setting on the tiny model."""

from __future__ import annotations

import pytest
import torch
from test_distill_generation import config

from kdlens.distill import METHODS, distill

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: methods with a KD term on teacher logits: their settings, and the logged part that holds the KD term
HONOURING = {
    "word_kd": ({"method": "word_kd"}, "kd"),
    "feature_kd": ({"method": "feature_kd", "feature_weight": 1.0}, "kd"),
    "gkd": ({"method": "gkd", "gkd": {"lambda_": 1.0, "max_new_tokens": 4}}, "kd"),  # on its own samples
    "distillm": ({"method": "distillm", "distillm": {"val_size": 4, "max_new_tokens": 4}}, "kd"),
    "minillm_pg": ({"method": "minillm", "minillm": {"max_new_tokens": 4}}, "loss"),
    "minillm_token": ({"method": "minillm", "minillm": {"form": "token"}}, "kd"),
    # its logged kd follows the teacher update the tau^2 factor itself scales: compare the pilot step's
    "metadistil": ({"method": "metadistil", "metadistil": {"quiz_size": 4, "quiz_batch_size": 4}}, "pilot_kd"),
}
REFUSING = {
    "sft": {"method": "sft", "student": "tiny"},
    "seq_kd": {"method": "seq_kd"},
    "blackbox": {"method": "blackbox", "blackbox": {"teacher": "os.path:basename"}},
}
#: methods with a teacher signal of their own: MPDistil's soft MSE at mpdistil.tau (its check_config refuses)
OWN_SIGNAL = {"mpdistil": "soft MSE at mpdistil.tau; see test_mpdistil_refuses_the_top_level_teacher_signal"}
SETTINGS = {"sigma": {"sigma": 2.0}, "temperature": {"temperature": 2.0},
            "scale_by_temperature_squared": {"temperature": 2.0, "scale_by_temperature_squared": True}}


def _config(tmp_path, tasks, name, **kw):
    return config(tmp_path, tasks, name, **{"steps": 1, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, arith_tasks):
    """One-step runs, built on first use: (method, setting) -> run directory."""
    root = tmp_path_factory.mktemp("signal_runs")
    done = {}

    def get(method: str, setting: str):
        if (method, setting) not in done:
            kw = {**HONOURING[method][0], **(SETTINGS[setting] if setting != "plain" else {})}
            done[method, setting] = distill(_config(root, arith_tasks, f"{method}-{setting}", **kw))
        return done[method, setting]

    return get


def _weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run.checkpoint_path / "model.safetensors"))


def _max_diff(a, b) -> float:
    wa, wb = _weights(a), _weights(b)
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def test_the_tables_cover_every_method():
    assert {HONOURING[m][0]["method"] for m in HONOURING} | set(REFUSING) | set(OWN_SIGNAL) == set(METHODS)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_mpdistil_refuses_the_top_level_teacher_signal_and_names_its_own(tmp_path, arith_tasks, setting):
    with pytest.raises(ValueError, match="method=mpdistil does not read .*(mpdistil.tau|no teacher-logit noise|tau\\^2)"):
        _config(tmp_path, arith_tasks, "bad", method="mpdistil", **SETTINGS[setting])


@pytest.mark.parametrize("method", sorted(HONOURING))
@pytest.mark.parametrize("setting", ["sigma", "temperature"])
def test_sigma_and_temperature_change_the_weights_of_every_kd_method(runs, method, setting):
    """sigma = 2 (resp. tau = 2) trains other weights than sigma = 0, tau = 1, and is recorded."""
    plain, changed = runs(method, "plain"), runs(method, setting)
    assert _max_diff(plain, changed) > 1e-6
    assert changed.manifest()[setting] == SETTINGS[setting][setting]
    if method == "distillm":  # its validation loss (which drives phi) sees the same teacher signal
        assert changed.log()[0]["val_loss"] != pytest.approx(plain.log()[0]["val_loss"], rel=1e-4)


@pytest.mark.parametrize("method", sorted(HONOURING))
def test_tau_squared_multiplies_the_kd_term_of_every_kd_method(runs, method):
    """Same first batch, same weights: the logged KD term at tau = 2 is exactly 4 times larger with the
    switch (Adam's normalised update hides a constant loss factor in the weights, so the loss is compared)."""
    key = HONOURING[method][1]
    plain, scaled = runs(method, "temperature"), runs(method, "scale_by_temperature_squared")  # both tau = 2
    assert scaled.log()[0][key] == pytest.approx(4.0 * plain.log()[0][key], rel=1e-5)
    assert scaled.manifest()["scale_by_temperature_squared"] is True


@pytest.mark.parametrize("method", sorted(REFUSING))
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_methods_without_a_kd_term_refuse_teacher_signal_settings(tmp_path, arith_tasks, method, setting):
    with pytest.raises(ValueError, match=f"method={method} .*would be ignored: drop") as err:
        _config(tmp_path, arith_tasks, "bad", **REFUSING[method], **SETTINGS[setting])
    assert "\n" not in str(err.value)
    # and without them the same config is fine
    assert _config(tmp_path, arith_tasks, "ok", **REFUSING[method]).loss is None


def test_seq_kd_refusal_says_how_to_soften_the_teacher_decoding(tmp_path, arith_tasks):
    with pytest.raises(ValueError, match="seq_kd.do_sample=true seq_kd.temperature=T"):
        _config(tmp_path, arith_tasks, "bad", method="seq_kd", temperature=2.0)
    for extra in ({"loss": "reverse_kl"}, {"kd_weight": 0.5}, {"loss_params": {"beta": 0.2}}):
        with pytest.raises(ValueError, match="would be ignored"):
            _config(tmp_path, arith_tasks, "bad", method="seq_kd", **extra)


def test_a_gold_ce_weight_is_refused_where_every_batch_is_generated(tmp_path, arith_tasks):
    with pytest.raises(ValueError, match="kd_weight=0.5 .*only on generated sequences"):
        _config(tmp_path, arith_tasks, "bad", method="minillm", kd_weight=0.5)
    with pytest.raises(ValueError, match="kd_weight=0.5 .*only on generated sequences"):
        _config(tmp_path, arith_tasks, "bad", method="gkd", kd_weight=0.5, gkd={"lambda_": 1.0})
    assert _config(tmp_path, arith_tasks, "ok", method="minillm", kd_weight=0.5,
                   minillm={"form": "token"}).kd_weight == 0.5
