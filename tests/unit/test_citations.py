"""The citation registry: complete, well formed, parseable BibTeX, and exactly what a run or sweep used."""

from __future__ import annotations

import inspect
import json
import re

import bibtexparser
import pytest

from kdlens.citations import (
    KDLENS_KEY,
    REFERENCES,
    USES,
    cite,
    directory_references,
    references,
    run_references,
    run_uses,
    sweep_references,
    task_uses,
    to_bibtex,
    to_text,
)

_DOI = re.compile(r"^10\.\d{4,9}/\S+$")
_ARXIV = re.compile(r"^\d{4}\.\d{4,5}$")


def _parse(text: str) -> dict[str, dict[str, str]]:
    library = bibtexparser.parse_string(text)
    assert not library.failed_blocks, [b.error for b in library.failed_blocks]
    return {e.key: {f.key: f.value for f in e.fields} for e in library.entries}


def test_every_entry_is_complete_cited_by_a_use_and_well_formed():
    used = {key for keys in USES.values() for key in keys}
    assert used == set(REFERENCES)  # no dangling key, no entry nothing cites
    for key, ref in REFERENCES.items():
        assert ref.key == key and ref.authors and ref.title and 1900 <= ref.year <= 2026 and ref.venue, key
        assert ref.entry_type in ("article", "inproceedings", "misc", "software")
        assert not ref.doi or _DOI.match(ref.doi), (key, ref.doi)
        assert not ref.arxiv or _ARXIV.match(ref.arxiv), (key, ref.arxiv)
        assert all("," in a or a in ("Student", "{kdlens developers}") for a in ref.authors), key
    # the ids the brief named, as the publishers' records show them
    assert REFERENCES["ramesh2025generalization"].arxiv == "2505.15442"
    assert REFERENCES["zhou2022bert"].doi == "10.18653/v1/2022.acl-long.485"
    assert REFERENCES["papineni2002bleu"].doi == "10.3115/1073083.1073135"
    assert REFERENCES["post2018call"].doi == "10.18653/v1/W18-6319"
    assert REFERENCES["schuirmann1987comparison"].doi == "10.1007/BF01068419"
    assert REFERENCES["lakens2017equivalence"].doi == "10.1177/1948550617697177"


def test_every_method_loss_feature_and_test_of_kdlens_has_a_reference():
    from kdlens.distill import METHODS
    from kdlens.losses import FEATURE_KINDS, LOSSES

    for method in [*METHODS, "metadistil", "mpdistil"]:
        assert USES.get(f"method:{method}"), method
    for loss in LOSSES:
        assert USES.get(f"loss:{loss}"), loss
    for kind in FEATURE_KINDS:
        assert USES.get(f"feature:{kind}"), kind
    for test in ("ttest", "paired_ttest", "wilcoxon", "mcnemar", "holm", "bh", "spearman", "pearson", "kendall",
                 "fisher_z", "bootstrap", "gee", "mixedlm", "tost", "friedman"):
        assert USES.get(f"test:{test}"), test
    for data in ("reasoning_gym", "gsm8k", "svamp", "multiarith", "addsub", "singleeq", "aqua"):
        assert USES.get(f"dataset:{data}"), data
    assert [r.key for r in cite("method:metadistil", "method:mpdistil")] == ["zhou2022bert", "sengupta2024good"]
    with pytest.raises(KeyError, match="no reference is registered for 'loss:nope'; known: .*loss:forward_kl"):
        cite("loss:nope")


def _word_kd(**changes):
    return {"teacher": "tiny", "student": "prune:1", "tasks": ["chain_sum:8"], "method": "word_kd",
            "loss": "reverse_kl", **changes}


@pytest.mark.parametrize(("config", "keys"), [
    # word-level KD with MiniLLM's divergence: Hinton + Kim & Rush for the method, Kullback-Leibler + MiniLLM for
    # reverse KL, reasoning-gym for the data; tau = 1 and sigma = 0 add nothing
    (_word_kd(), {KDLENS_KEY, "hinton2015distilling", "kim2016sequence", "kullback1951information", "gu2024minillm",
                  "stojanovski2025reasoning"}),
    # SFT trains on no divergence (a configured loss is refused); LoRA is cited
    ({**{k: v for k, v in _word_kd().items() if k != "loss"}, "method": "sft", "lora": True}, {KDLENS_KEY, "ouyang2022training", "hu2022lora", "stojanovski2025reasoning"}),
    # GKD at tau = 2 with teacher noise: GKD, Lin's JSD, Hinton's temperature, the paradox paper's noise ablation
    (_word_kd(method="gkd", loss="jsd", temperature=2.0, sigma=1.0, tasks=["../x/math-test/SVAMP.json"]),
     {KDLENS_KEY, "agarwal2024onpolicy", "lin1991divergence", "hinton2015distilling", "ramesh2025generalization",
      "patel2021nlp"}),
    # feature KD: hidden states (PKD) by MMD plus attention (MiniLM); dotted keys as a sweep writes them
    ({**_word_kd(method="feature_kd", loss="forward_kl", feature_weight=1.0), "feature.kind": "mmd",
      "feature.attention": True},
     {KDLENS_KEY, "romero2015fitnets", "sun2019patient", "gretton2012kernel", "wang2020minilm",
      "kullback1951information", "hinton2015distilling", "stojanovski2025reasoning"}),
    # sequence-level KD trains by cross-entropy on the teacher's text: no divergence (a loss is refused)
    ({**{k: v for k, v in _word_kd().items() if k != "loss"}, "method": "seq_kd", "tasks": ["hf:openai/gsm8k:main"]},
     {KDLENS_KEY, "kim2016sequence", "cobbe2021training"}),
])
def test_a_run_cites_exactly_what_its_config_uses(config, keys):
    refs = run_references(config)
    assert {k for ks in refs.values() for k in ks} == keys
    assert [r.key for r in references(refs)][0] == KDLENS_KEY  # software first, whatever the manifest's order
    # a DistillConfig gives the same as its resolved mapping
    from kdlens.config import load_config

    flat = {k: v for k, v in config.items() if "." not in k}
    dotted = [f"{k}={json.dumps(v)}" for k, v in config.items() if "." in k]
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in flat.items()] + dotted)
    assert run_uses(cfg) == run_uses(config)


def test_task_specs_map_to_their_data_sources():
    assert task_uses(["chain_sum:200", "gsm_symbolic"]) == ["dataset:reasoning_gym"]
    assert task_uses(["../shared/data/kd-generalization/math-test/MultiArith.json", "AddSub.jsonl",
                      "/d/SingleEq.json", "data/AQuA.json", "x/gsm8k.json", "train/math_data.json"]) == [
        "dataset:multiarith", "dataset:addsub", "dataset:singleeq", "dataset:aqua", "dataset:gsm8k",
        "dataset:kd_generalization"]
    assert task_uses(["my/own/data.json", "hf:someone/unknown"]) == []  # no registered source: not guessed
    assert task_uses(None) == [] and task_uses("chain_sum") == ["dataset:reasoning_gym"]


def test_bibtex_parses_with_every_field_and_text_has_one_line_per_entry():
    entries = list(REFERENCES.values())
    parsed = _parse(to_bibtex(entries))
    assert list(parsed) == [e.key for e in entries]
    for e in entries:
        fields = parsed[e.key]
        assert fields["title"] == e.title and fields["year"] == str(e.year)
        assert fields.get("doi", "") == e.doi and fields.get("eprint", "") == e.arxiv
        assert fields["author"].split(" and ") == list(e.authors)
        if e.pages:
            assert fields["pages"] == e.pages.replace("-", "--")
    text = to_text(entries).splitlines()
    assert len(text) == len(entries)
    assert text[[e.key for e in entries].index("ramesh2025generalization")] == (
        "Ramesh et al. (2025). On the Generalization vs Fidelity Paradox in Knowledge Distillation. Findings of "
        "the Association for Computational Linguistics: ACL 2025, pp. 17930-17951. arXiv:2505.15442.")


def test_each_loss_and_test_docstring_names_its_references():
    import kdlens.analysis as A
    import kdlens.losses as L
    from kdlens.losses import LOSSES

    named = {getattr(L, name): USES[f"loss:{name}"] for name in LOSSES}
    named.update({L.feature_loss: USES["feature:l2"] + USES["feature:mmd"], L.mmd_rbf: USES["feature:mmd"],
                  L.pkd_loss: USES["feature:pkd"], L.layer_map: USES["feature:pkd"],
                  L.attention_kl: USES["feature:attention_kl"],
                  A.ttest: USES["test:ttest"], A.paired_ttest: USES["test:paired_ttest"],
                  A.wilcoxon: USES["test:wilcoxon"], A.mcnemar: USES["test:mcnemar"],
                  A.correlation: USES["test:spearman"] + USES["test:kendall"] + USES["test:fisher_z"],
                  A.adjust_pvalues: USES["test:holm"] + USES["test:bh"], A.fit_gee: USES["test:gee"],
                  A.gee: USES["test:gee"], A.paradox_test: USES["test:paradox"],
                  A.agreement: USES["metric:agreement"] + USES["test:bootstrap"],
                  A.summarize_fidelity: USES["test:bootstrap"], A.fidelity: USES["metric:fidelity"],
                  A.sentence_bleu: USES["metric:bleu"], A.rouge_l: USES["metric:rouge_l"],
                  A.embedding_cosine: USES["metric:embedding_cosine"]})
    for fn, keys in named.items():
        doc = inspect.getdoc(fn)
        notes = doc[doc.index("Notes\n-----"):]
        for key in keys:
            assert f"``{key}``" in notes, (fn.__name__, key)


def test_a_trained_run_and_its_sweep_record_their_references_and_cite_prints_them(tmp_path, capsys):
    from kdlens.cli import main
    from kdlens.sweep import run_sweep

    sweep = {"name": "cite", "base": {"teacher": "tiny", "student": "prune:1", "tasks": ["chain_sum:4"], "steps": 1,
                                      "batch_size": 4, "device": "cpu", "method": "word_kd"},
             "axes": {"loss": ["reverse_kl", "tvd"]}}
    root = tmp_path / "sweep"
    run_sweep(sweep, output_dir=root, evaluate=False, max_runs=1)  # trains the reverse-KL run only
    manifest = json.loads((root / "manifest.json").read_text())
    assert {k for ks in manifest["references"].values() for k in ks} == {
        KDLENS_KEY, "hinton2015distilling", "kim2016sequence", "kullback1951information", "gu2024minillm",
        "wen2023fdivergence", "stojanovski2025reasoning"}  # every run of the spec, trained or not
    (run_dir,) = [p for p in (root / "runs").iterdir() if (p / "done").is_file()]
    assert json.loads((run_dir / "manifest.json").read_text())["references"] == run_references(
        {**sweep["base"], "loss": "reverse_kl"})

    assert main(["cite", str(run_dir)]) == 0
    parsed = _parse(capsys.readouterr().out)
    assert set(parsed) == {KDLENS_KEY, "hinton2015distilling", "kim2016sequence", "kullback1951information",
                           "gu2024minillm", "stojanovski2025reasoning"}
    assert parsed["gu2024minillm"]["eprint"] == "2306.08543"
    assert main(["cite", str(root), "--format", "text", "-o", str(tmp_path / "refs.txt")]) == 0
    lines = (tmp_path / "refs.txt").read_text().splitlines()
    assert len(lines) == 7 and lines[0].startswith("kdlens developers (2026)")

    # a directory written before manifests held references: rebuilt from its config / spec
    for path in (run_dir / "manifest.json", root / "manifest.json"):
        data = json.loads(path.read_text())
        del data["references"]
        path.write_text(json.dumps(data))
    assert directory_references(run_dir) == run_references({**sweep["base"], "loss": "reverse_kl"})
    assert set(directory_references(root)) == set(manifest["references"])

    assert main(["cite", str(tmp_path / "nowhere")]) == 1
    assert "holds no manifest.json with references, config.yaml or spec.yaml" in capsys.readouterr().err


def test_sweep_references_add_the_evaluation_and_skip_unknown_uses_without_failing():
    refs = sweep_references({"method": "word_kd", "loss": "forward_kl", "tasks": ["chain_sum"]},
                            [{"sigma": 0.0}, {"sigma": 2.0, "teacher_aware": True}],
                            evaluation={"tasks": ["x/SVAMP.json"], "fidelity": True, "tokens": True})
    assert list(refs) == ["software:kdlens", "method:word_kd", "loss:forward_kl", "dataset:reasoning_gym",
                          "method:sft", "training:teacher_noise", "metric:agreement", "test:bootstrap",
                          "metric:fidelity", "metric:bleu", "metric:token_kl", "dataset:svamp"]
    # a method added without a reference does not break a run; it is recorded with no keys
    assert run_references({"method": "lab_new", "loss": "forward_kl"})["method:lab_new"] == []
