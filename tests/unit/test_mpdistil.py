"""MPDistil: its objectives against hand computations, REINFORCE on a bandit, the four stages on tiny
encoder and causal models (artefacts, ablations, resume after a kill), plain-transformers checkpoints,
and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from kdlens.config import load_config
from kdlens.distill import distill
from kdlens.distill.mpdistil import (
    STAGES,
    CurriculumPolicy,
    curriculum_reward,
    curriculum_student_loss,
    discounted_returns,
    evaluate_classifier,
    meta_teacher_loss,
    reinforce_loss,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TASKS = ["syllogism:40", "ransom_note:40"]  # reasoning-gym tasks with Yes/No and True/False answers


def _log(*p):
    return torch.log(torch.tensor(p, dtype=torch.float64))


# --- objectives --------------------------------------------------------------------------------


def test_meta_teacher_losses_match_hand_computed_values():
    logp_t, logp_s = _log(0.5, 0.25), _log(0.2, 0.4)
    # 1/2 CE(T'(h_T)) + 1/2 CE(T'(h_S)) = -1/4 (ln .5 + ln .25) - 1/4 (ln .2 + ln .4)
    assert float(meta_teacher_loss(logp_t, logp_s, kind="collaborative")) == pytest.approx(1.1512925464970230)
    # CE(T'(h_T)) - mean p(h_T) + mean p(h_S) = 1.0397207708399179 - 0.375 + 0.3
    assert float(meta_teacher_loss(logp_t, logp_s, kind="competitive")) == pytest.approx(0.9647207708399179)
    with pytest.raises(ValueError, match="kind"):
        meta_teacher_loss(logp_t, logp_s, kind="cooperative")


def test_meta_teacher_losses_from_an_encoder_head_restrict_the_softmax_to_each_tasks_labels():
    from kdlens.distill.mpdistil._views import EncoderView

    view = EncoderView(None, label_ids={"a": [0, 1], "b": [2, 3, 4]}, label_names=["a:x", "a:y", "b:p", "b:q", "b:r"],
                       tasks=["a", "b"], max_length=8)
    # example 0 (task a, gold y): logits 0, ln 3 -> p = 3/4; example 1 (task b, gold p): 0, 0, 0 -> 1/3
    teacher_logits = torch.tensor([[0.0, math.log(3.0), 9.0, 9.0, 9.0], [9.0, 9.0, 0.0, 0.0, 0.0]])
    student_logits = torch.tensor([[math.log(3.0), 0.0, -9.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0), 0.0, 0.0]])
    batch = {"task": torch.tensor([0, 1]), "label": torch.tensor([1, 2])}
    logp_t, logp_s = view.class_logp(teacher_logits, batch), view.class_logp(student_logits, batch)
    assert torch.allclose(logp_t.exp(), torch.tensor([0.75, 1 / 3]))
    assert torch.allclose(logp_s.exp(), torch.tensor([0.25, 0.5]))
    expected = -0.5 * (math.log(0.75) + math.log(1 / 3)) / 2 - 0.5 * (math.log(0.25) + math.log(0.5)) / 2
    assert float(meta_teacher_loss(logp_t, logp_s, kind="collaborative")) == pytest.approx(expected, rel=1e-6)
    expected = -(math.log(0.75) + math.log(1 / 3)) / 2 - (0.75 + 1 / 3) / 2 + (0.25 + 0.5) / 2
    assert float(meta_teacher_loss(logp_t, logp_s, kind="competitive")) == pytest.approx(expected, rel=1e-6)


def test_curriculum_student_loss_and_rewards_match_hand_computed_values():
    logp_s, logp_m = _log(0.6, 0.1, 0.5), _log(0.5, 0.3, 0.5)
    # CE - mean p_S + mean p_T'(h_S) = -(ln .6 + ln .1 + ln .5) / 3 - 0.4 + 13/30
    expected = -(math.log(0.6) + math.log(0.1) + math.log(0.5)) / 3 - 0.4 + 1.3 / 3
    assert float(curriculum_student_loss(logp_s, logp_m)) == pytest.approx(expected)
    assert float(curriculum_reward(logp_s, logp_m, kind="binary")) == 1.0  # only 0.6 > 0.5; a tie does not count
    assert float(curriculum_reward(logp_s, logp_m, kind="real")) == pytest.approx(0.1 - 0.2 + 0.0)
    student = _log(0.6, 0.1, 0.5).requires_grad_()
    curriculum_student_loss(student, logp_m.requires_grad_()).backward()
    assert logp_m.grad is None  # the meta-teacher's term is a constant


def test_discounted_returns_are_returns_to_go():
    assert discounted_returns([1.0, 0.0, 2.0], 0.5).tolist() == [1.5, 1.0, 2.0]
    assert discounted_returns([1.0, 1.0, 1.0], 0.99).tolist() == pytest.approx([1 + 0.99 + 0.99**2, 1.99, 1.0])


@pytest.mark.parametrize("seed", [0, 1])
def test_reinforce_with_the_curriculum_policy_finds_the_best_arm_of_a_bandit(seed):
    """Three tasks whose quiz rewards are Bernoulli(0.2), Bernoulli(0.9), Bernoulli(0.5): the policy,
    trained as stage 4 trains it (episodes of 8 draws, returns-to-go at gamma 0.99, the episode's
    mean return as baseline, Adam), ends up choosing the best arm (10 of 10 seeds did at these settings)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    weight = torch.randn(6, 5, generator=gen)  # the summarised student weight: fixed, as for a bandit
    policy = CurriculumPolicy(6, 5, 3)
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.03)
    means = torch.tensor([0.2, 0.9, 0.5])
    start = policy(weight).detach()
    for _ in range(200):
        log_probs, rewards = [], []
        for _ in range(8):
            probs = policy(weight)
            action = int(torch.multinomial(probs.detach().double(), 1, generator=gen))
            log_probs.append(torch.log(probs[action]))
            rewards.append(float(torch.rand((), generator=gen) < means[action]))
        loss = reinforce_loss(torch.stack(log_probs), discounted_returns(rewards, 0.99))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = policy(weight).detach()
    assert float(start.max()) < 0.6
    assert int(final.argmax()) == 1 and float(final[1]) > 0.95


def test_the_encoder_soft_loss_is_mpdistils_mse_over_each_tasks_own_labels():
    from kdlens.distill.mpdistil._views import EncoderView

    view = EncoderView(None, label_ids={"a": [0, 1], "b": [2, 3, 4]}, label_names=list("vwxyz"), tasks=["a", "b"],
                       max_length=8)
    s, t = torch.randn(2, 5, generator=torch.Generator().manual_seed(1)), torch.randn(2, 5)
    batch = {"task": torch.tensor([0, 1]), "label": torch.tensor([0, 2])}
    tau = 5.0
    by_hand = [tau**2 * F.mse_loss(F.softmax(t[0, :2] / tau, -1), F.softmax(s[0, :2] / tau, -1)),
               tau**2 * F.mse_loss(F.softmax(t[1, 2:] / tau, -1), F.softmax(s[1, 2:] / tau, -1))]
    assert float(view.soft(s, t, batch, tau=tau)) == pytest.approx(float(sum(by_hand) / 2), rel=1e-5)


def test_the_causal_class_of_a_record_is_its_gold_answer_after_the_prompt():
    from kdlens.data import Record
    from kdlens.distill.mpdistil._views import CausalView
    from kdlens.models import tiny_model

    model, tokenizer = tiny_model(seed=0)
    record = Record(id="r", task="t", split="train", prompt="2+2?", answer="4", rationale="two and two is 4")
    answer_view = CausalView(tokenizer, max_length=128, system=None, target="answer", vocab_size=260)
    feature = answer_view.encode(record, 0, purpose="class")
    targets = [t for t in feature["labels"] if t != -100]
    assert tokenizer.decode(targets).startswith("4") and "two" not in tokenizer.decode(targets)
    full = answer_view.encode(record, 0, purpose="train")  # stages 1-2 train on the whole response
    assert "two and two is 4" in tokenizer.decode([t for t in full["labels"] if t != -100])
    response_view = CausalView(tokenizer, max_length=128, system=None, target="response", vocab_size=260)
    assert response_view.encode(record, 0, purpose="class")["labels"] == full["labels"]
    batch = answer_view.collate([feature], torch.device("cpu"))
    logits = answer_view.forward(model, batch).logits
    logp = torch.log_softmax(logits.double(), -1)[0]
    by_hand = sum(float(logp[i, feature["labels"][i + 1]]) for i in range(len(feature["labels"]) - 1)
                  if feature["labels"][i + 1] != -100)
    assert float(answer_view.class_logp(logits, batch)[0]) == pytest.approx(by_hand, rel=1e-5)


# --- the four stages ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A 2-layer, d 32 BERT with all-MiniLM-L6-v2's tokenizer (no classifier head: stage 1 adds one)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kdlens.models._encoder import encoder_directory

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256)).save_pretrained(path)
    AutoTokenizer.from_pretrained(encoder_directory("all-minilm-l6-v2")).save_pretrained(path)
    return str(path)


def mp_config(out, teacher, *, name="run", mpdistil=None, **kw):
    base = dict(teacher=teacher, student="prune:1", tasks=TASKS, method="mpdistil", steps=4, batch_size=4, lr=1e-3,
                seed=0, device="cpu", max_length=128, save_every=1, output_dir=str(out / name))
    base.update(kw)
    base["mpdistil"] = {"quiz_size": 8, "quiz_batch_size": 4, "meta_steps": 3, "episodes": 2, "episode_steps": 3,
                        **(mpdistil or {})}
    return load_config(None, base)


@pytest.fixture(scope="session")
def encoder_run(tmp_path_factory, tiny_encoder):
    return distill(mp_config(tmp_path_factory.mktemp("mp-encoder"), tiny_encoder))


@pytest.fixture(scope="session")
def causal_run(tmp_path_factory):
    return distill(mp_config(tmp_path_factory.mktemp("mp-causal"), "tiny", max_length=256))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "checkpoint" / "model.safetensors") if (path / "checkpoint").is_dir()
                     else str(path / "model.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_encoder_run_writes_every_stage_the_curriculum_and_a_manifest(encoder_run):
    run = encoder_run
    stages = run.path / "stages"
    assert all((stages / s / "done").is_file() for s in STAGES)
    quiz = [json.loads(x) for x in (stages / "data" / "quiz.jsonl").read_text().splitlines()]
    train = [json.loads(x) for x in (stages / "data" / "train.jsonl").read_text().splitlines()]
    assert len(quiz) == 16 and len(train) == 64  # 8 of each task's 40 held out; stages 1-2 train on the rest
    assert not {(r["task"], r["id"]) for r in quiz} & {(r["task"], r["id"]) for r in train}
    rows = [json.loads(line) for line in (stages / "4_curriculum" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and [r["episode"] for r in rows] == [0, 0, 0, 1, 1, 1]
    for row in rows:
        assert row["task"] in ("syllogism", "ransom_note") and row["task"] == ["syllogism", "ransom_note"][row["action"]]
        assert sum(row["probs"]) == pytest.approx(1.0) and 0 <= row["reward"] <= row["reward_n"] == 4
    assert "policy_loss" in rows[2] and "policy_loss" not in rows[1]  # one policy step per episode
    manifest = run.manifest()
    assert manifest["model_kind"] == "encoder" and manifest["method"] == "mpdistil"
    assert manifest["labels"] == {"syllogism": ["No", "Yes"], "ransom_note": ["False", "True"]}
    assert manifest["n_quiz"] == {"syllogism": 8, "ransom_note": 8} and manifest["n_train"]["syllogism"] == 32
    assert manifest["method_settings"]["tau"] == 5.0 and manifest["method_settings"]["meta_loss"] == "collaborative"
    assert manifest["final_student"] == "stages/4_curriculum"
    assert manifest["stages"]["4_curriculum"]["task_choices"] == {
        t: sum(r["task"] == t for r in rows) for t in ("syllogism", "ransom_note")}
    assert {r["stage"] for r in run.log()} == set(STAGES)
    assert _same(_weights(run.path), _weights(stages / "4_curriculum"))


def test_the_meta_teacher_is_the_teachers_body_with_a_trained_head(encoder_run):
    teacher, meta = _weights(encoder_run.path / "stages" / "1_teacher"), _weights(encoder_run.path / "stages" /
                                                                                  "3_meta_teacher")
    assert teacher.keys() == meta.keys()
    changed = sorted(k for k in teacher if not torch.equal(teacher[k], meta[k]))
    assert changed == ["classifier.bias", "classifier.weight"]


def test_the_student_is_a_two_layer_prune_that_loads_with_plain_transformers(encoder_run, tiny_encoder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdlens.data import load_tasks

    model = AutoModelForSequenceClassification.from_pretrained(encoder_run.checkpoint_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(encoder_run.checkpoint_path)
    assert model.config.num_hidden_layers == 1 and model.config.kdlens_kept_layers == [0]
    assert model.config.kdlens_label_sets == {"syllogism": [0, 1], "ransom_note": [2, 3]}
    records = load_tasks(["syllogism:12", "ransom_note:12"], split="test", seed=0)
    table = evaluate_classifier({"student": encoder_run.path}, records, max_length=128)
    assert len(table) == 24 and set(table["model_id"]) == {"student"}
    with torch.no_grad():
        logits = model(**tokenizer([r.prompt for r in records], truncation=True, max_length=128, padding=True,
                                   return_tensors="pt")).logits
    for record, row, (_, out) in zip(records, logits, table.iterrows(), strict=True):
        ids = model.config.kdlens_label_sets[record.task]
        label = model.config.id2label[ids[int(row[ids].argmax())]].split(":", 1)[1]
        assert out["pred_answer"] == label and out["correct"] == (label == record.answer)
        assert out["mean_logprob"] == pytest.approx(float(torch.log_softmax(row[ids].double(), -1).max()), rel=1e-5)


class Killed(Exception):
    pass


def _kill_at(stage: str, step: int):
    def callback(at, logs):
        if logs.get("stage") == stage and at == step:
            raise Killed(stage)
    return callback


@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_each_stage_resumes_after_a_kill_to_the_weights_of_an_uninterrupted_run(tmp_path, kind, tiny_encoder,
                                                                               encoder_run, causal_run):
    """Killed in stage 1, rerun and killed in stage 2, ... (stage 4 mid-episode): each rerun skips the
    finished stages and resumes the killed one from its last state (save_every=1; stage 4 from its
    last episode end), and every stage's weights equal the uninterrupted run's."""
    teacher, baseline, extra = (tiny_encoder, encoder_run, {}) if kind == "encoder" else ("tiny", causal_run,
                                                                                          {"max_length": 256})
    cfg = mp_config(tmp_path, teacher, **extra)
    kills = [("1_teacher", 3), ("2_student", 2), ("3_meta_teacher", 2), ("4_curriculum", 5)]
    resumed_at = {"1_teacher": 4, "2_student": 3, "3_meta_teacher": 3, "4_curriculum": 4}  # first step rerun
    seen = []

    def record(step, logs):
        seen.append((logs["stage"], step))

    for index, (stage, step) in enumerate([*kills, (None, None)]):
        seen.clear()
        if stage is None:
            run = distill(cfg, callbacks=[record])
        else:
            with pytest.raises(Killed):
                distill(cfg, callbacks=[record, _kill_at(stage, step)])
            assert not (tmp_path / "run" / "stages" / stage / "done").exists()
        if index:
            previous = kills[index - 1][0]
            assert seen[0] == (previous, resumed_at[previous])
            assert {s for s, _ in seen} <= set(STAGES[STAGES.index(previous):])
    for stage in STAGES:
        assert _same(_weights(run.path / "stages" / stage), _weights(baseline.path / "stages" / stage)), stage
    assert _same(_weights(run.path), _weights(baseline.path))
    ours = [json.loads(x) for x in (run.path / "stages" / "4_curriculum" / "train_log.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (baseline.path / "stages" / "4_curriculum" / "train_log.jsonl").read_text()
              .splitlines()]
    assert [(r["step"], r["task"], r["reward"]) for r in ours] == [(r["step"], r["task"], r["reward"]) for r in theirs]


def test_a_causal_run_keeps_an_untied_meta_head_and_loads_with_plain_transformers(causal_run):
    from transformers import AutoModelForCausalLM

    stages = causal_run.path / "stages"
    assert (stages / "1_teacher" / "manifest.json").is_file()  # stage 1 is kdlens's own sft run
    assert json.loads((stages / "1_teacher" / "manifest.json").read_text())["method"] == "sft"
    meta = AutoModelForCausalLM.from_pretrained(stages / "3_meta_teacher" / "checkpoint")
    teacher = AutoModelForCausalLM.from_pretrained(stages / "1_teacher" / "checkpoint")
    assert not meta.config.tie_word_embeddings
    assert torch.equal(meta.model.embed_tokens.weight, teacher.model.embed_tokens.weight)  # the body is frozen
    assert not torch.equal(meta.lm_head.weight, teacher.lm_head.weight)  # the head was trained
    student = AutoModelForCausalLM.from_pretrained(causal_run.checkpoint_path)
    assert student.config.num_hidden_layers == 1
    assert causal_run.manifest()["model_kind"] == "causal"


def test_the_ablations_are_switches(tmp_path, tiny_encoder, encoder_run):
    run = distill(mp_config(tmp_path, tiny_encoder, name="no-meta-uniform",
                            mpdistil={"meta_teacher": False, "curriculum": "uniform"}))
    stages = run.path / "stages"
    assert json.loads((stages / "3_meta_teacher" / "stage.json").read_text())["skipped"] is True
    assert not (stages / "3_meta_teacher" / "checkpoint").exists()
    rows = [json.loads(x) for x in (stages / "4_curriculum" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["probs"] == [0.5, 0.5] and "policy_loss" not in r for r in rows)
    # stages 1-2 do not depend on the ablations
    assert _same(_weights(stages / "2_student"), _weights(encoder_run.path / "stages" / "2_student"))
    run = distill(mp_config(tmp_path, tiny_encoder, name="no-curriculum", mpdistil={"curriculum": "none"}))
    assert run.manifest()["final_student"] == "stages/2_student"
    assert _same(_weights(run.path), _weights(encoder_run.path / "stages" / "2_student"))


def test_the_competitive_loss_and_the_real_reward_change_what_is_trained(tmp_path, tiny_encoder, encoder_run):
    run = distill(mp_config(tmp_path, tiny_encoder, mpdistil={"meta_loss": "competitive", "reward": "real"}))
    stages = run.path / "stages"
    assert not _same(_weights(stages / "3_meta_teacher"), _weights(encoder_run.path / "stages" / "3_meta_teacher"))
    rows = [json.loads(x) for x in (stages / "4_curriculum" / "train_log.jsonl").read_text().splitlines()]
    for row in rows:  # real reward: sum of p_S - p_T' over the reward batch
        assert row["reward"] == pytest.approx(4 * (row["p_true_student"] - row["p_true_meta"]), abs=1e-5)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tasks": ["syllogism:40"]}, "chooses among tasks"),
    ({"tasks": ["syllogism:8", "ransom_note:40"]}, "holds out all 8 examples of task syllogism:8"),
    ({"student": None}, "distills a student"),
    ({"sigma": 1.0}, "does not read sigma"),
    ({"temperature": 2.0}, "set mpdistil.tau"),
    ({"kd_weight": 0.5}, "mpdistil.alpha"),
    ({"loss": "reverse_kl"}, "loss=mse_soft"),
    ({"lora": True}, "lora=false"),
    ({"grad_accum": 2}, "grad_accum=2"),
    ({"teacher_source": "cache"}, "teacher_source=online"),
    ({"student": "tiny"}, "needs two models of one kind"),
    ({"mpdistil": {"target": "response"}}, "leave mpdistil.target unset"),
    ({"mpdistil": {"quiz_batch_size": 16}}, "larger than each task's quiz set"),
    ({"mpdistil": {"meta_loss": "friendly"}}, "mpdistil.meta_loss"),
    ({"mpdistil": {"gamma": 0.0}}, "gamma"),
    ({"mpdistil": {"curriculum": "none", "target_task": "syllogism"}}, "skips stage 4"),
])
def test_bad_input_is_refused_at_config_time(tmp_path, tiny_encoder, overrides, message):
    with pytest.raises(ValueError, match=message):
        mp_config(tmp_path, tiny_encoder, **overrides)


def test_an_encoder_with_a_causal_method_is_refused(tmp_path, tiny_encoder):
    for method in ("word_kd", "metadistil", "sft"):
        with pytest.raises(ValueError, match="is an encoder classifier, but method=" + method):
            load_config(None, dict(teacher=tiny_encoder, student="prune:1", tasks=TASKS, method=method,
                                   output_dir=str(tmp_path / "x")))


def test_run_time_bad_input_names_the_problem_before_any_stage_runs(tmp_path, tiny_encoder):
    with pytest.raises(ValueError, match="target_task='sylogism' is not one of the run's tasks"):
        distill(mp_config(tmp_path, tiny_encoder, name="a", mpdistil={"target_task": "sylogism"}))
    with pytest.raises(ValueError, match=r"task 'chain_sum' has \d+ distinct answers"):
        distill(mp_config(tmp_path, tiny_encoder, name="b", tasks=["chain_sum:40", "syllogism:40"]))
    with pytest.raises(ValueError, match="no classifier trained by kdlens"):
        distill(mp_config(tmp_path, tiny_encoder, name="c", mpdistil={"finetune_teacher": False}))
    for name in "abc":
        assert not (tmp_path / name / "stages" / "1_teacher").exists()
