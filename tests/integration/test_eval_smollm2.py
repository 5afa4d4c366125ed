"""``kdlens.eval`` on the embedded SmolLM2-135M-Instruct (marker: integration).

Kept small (2 GSM8K items, 8 new tokens): the unit tests cover the logic on tiny models; these
check that it holds on a real tokenizer, chat template and model.
"""

from __future__ import annotations

import math

import pytest

from kdlens.data import encode_for_generation, load_task
from kdlens.eval import collect_tokens, evaluate, generate

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("smollm2")]


@pytest.fixture(scope="module")
def gsm8k(kd_data):
    return load_task(str(kd_data / "math-test" / "gsm8k.json"), n=2)


def test_evaluate_smollm2_batched_greedy_equals_unbatched(smollm2, gsm8k):
    model, tokenizer = smollm2
    table = evaluate({"teacher": smollm2}, {"gsm8k": gsm8k}, max_new_tokens=8, batch_size=2)
    for record, row in zip(gsm8k, table.itertuples(), strict=True):
        alone = generate(model, tokenizer, [encode_for_generation(tokenizer, record)], max_new_tokens=8)[0]
        assert row.output == alone.text
        assert row.n_output_tokens == len(alone.token_ids)
        assert row.mean_logprob == pytest.approx(alone.mean_logprob, abs=1e-3)
    assert table["output"].str.len().gt(10).all()  # real text, not padding or special tokens
    # a trained model finds its own greedy text likely and the gold rationale plausible
    assert (table["mean_logprob"] > -2.0).all()
    assert table["gold_nll"].between(0.1, 4.0).all()
    assert (table["finish_reason"] == "length").all()  # 8 tokens are too few to finish a GSM8K answer


def test_collect_tokens_smollm2_against_itself_and_a_pruned_student(smollm2, gsm8k):
    from kdlens.models import prune_layers

    model, tokenizer = smollm2
    pairs = [(gsm8k[0].prompt, "Let's think step by step.")]
    same = collect_tokens(smollm2, smollm2, pairs)
    assert len(same) == len(tokenizer.encode("Let's think step by step.", add_special_tokens=False)) + 1
    assert same["top1_agree"].all() and same["forward_kl"].abs().max() < 1e-5
    pruned = (prune_layers(model, 10), tokenizer)
    table = collect_tokens(pruned, smollm2, pairs)
    assert (table["forward_kl"] > 1e-3).all() and table["reverse_kl"].map(math.isfinite).all()
    assert table["token_id"].tolist() == same["token_id"].tolist()
