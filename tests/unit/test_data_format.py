"""Prompt formatting, training/generation encoding, truncation and collation (kdlens.data._format)."""

from __future__ import annotations

import pytest
import torch

from kdlens.data import (
    ALPACA_PREAMBLE,
    IGNORE_INDEX,
    Record,
    collate,
    encode_for_generation,
    encode_for_training,
    format_prompt,
    response_text,
)

CHATML = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ("<s>", "<|im_start|>", "<|im_end|>", "<pad>")


def _byte_chars() -> dict[int, str]:
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _tokenizer(*, chat_template: str | None):
    """A byte-level BPE tokenizer with a few merges (so tokens span character boundaries, as in real
    tokenizers), BOS added by ``add_special_tokens=True``, and optionally a ChatML template that
    writes the BOS itself."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bc = _byte_chars()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({bc[b]: len(SPECIALS) + b for b in range(256)})
    pairs = [(bc[10], "4"), (bc[10], bc[10]), ("#", "#"), ("##", "#"), (bc[32], "t"), ("h", "e"), ("e", "r"), ("a", "n"),
             ("1", "2"), ("4", "2"), (":", bc[10])]
    merges = []
    for a, b in pairs:
        vocab.setdefault(a + b, len(vocab))
        merges.append((a, b))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>",
        chat_template=chat_template, clean_up_tokenization_spaces=False,
    )


@pytest.fixture(scope="module")
def chat_tok():
    return _tokenizer(chat_template=CHATML)


@pytest.fixture(scope="module")
def plain_tok():
    return _tokenizer(chat_template=None)


def _record(prompt="What is 12 + 30?", rationale="\n12 + 30 = 42.\n#### 42", answer="42") -> Record:
    return Record(id="r-0", task="toy", split="train", prompt=prompt, answer=answer, rationale=rationale)


def test_response_text_is_stripped_rationale_else_answer():
    assert response_text(_record()) == "12 + 30 = 42.\n#### 42"
    assert response_text(_record(rationale=None)) == "42"
    assert response_text(_record(rationale="   ")) == "42"


def test_format_prompt_uses_the_chat_template_with_generation_prompt(chat_tok):
    text = format_prompt(chat_tok, "Hi there", system="Be brief.")
    assert text == "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    assert format_prompt(chat_tok, "Hi") == "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_format_prompt_falls_back_to_alpaca(plain_tok):
    assert format_prompt(plain_tok, "Add 2 and 3.") == (
        f"{ALPACA_PREAMBLE}\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
    )
    assert format_prompt(plain_tok, "Q", system="Solve it.") == "Solve it.\n\n### Instruction:\nQ\n\n### Response:\n"


@pytest.mark.parametrize("which", ["chat_tok", "plain_tok"])
def test_labels_mask_exactly_the_prompt(which, request):
    tok = request.getfixturevalue(which)
    record = _record()
    enc = encode_for_training(tok, record, max_length=None)
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels) == len(enc["attention_mask"]) and set(enc["attention_mask"]) == {1}
    prompt_ids = encode_for_generation(tok, record)
    n_prompt = len(prompt_ids)
    # training context == generation context, token for token
    assert ids[:n_prompt] == prompt_ids
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    targets = labels[n_prompt:]
    assert IGNORE_INDEX not in targets and targets == ids[n_prompt:]
    # the targets are the response and then EOS, nothing else (no template newline after EOS)
    assert targets[-1] == tok.eos_token_id and targets.count(tok.eos_token_id) == 1
    assert tok.decode(targets[:-1]) == "12 + 30 = 42.\n#### 42"
    # exactly one BOS: the chat template writes it, so it is not added a second time
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_prompt_and_response_are_tokenized_apart(plain_tok):
    # "\n4" is a merge: tokenizing prompt + response as one string fuses the prompt's last newline
    # with the answer's first digit, so the prompt/response boundary would fall inside a token
    record = _record(prompt="Q", rationale=None, answer="42")
    prompt_text = format_prompt(plain_tok, "Q")
    joint = plain_tok(prompt_text + "42")["input_ids"]
    alone = plain_tok(prompt_text)["input_ids"]
    assert joint[: len(alone)] != alone
    enc = encode_for_training(plain_tok, record, max_length=None)
    assert enc["input_ids"][: len(alone)] == alone
    assert enc["labels"] == [IGNORE_INDEX] * len(alone) + enc["input_ids"][len(alone):]
    assert plain_tok.decode(enc["input_ids"][len(alone):]) == "42<|im_end|>"


def test_truncation_left_drops_prompt_from_the_left_then_response_end(plain_tok):
    record = _record()
    full = encode_for_training(plain_tok, record, max_length=None)
    n_prompt = full["labels"].count(IGNORE_INDEX)
    n_resp = len(full["input_ids"]) - n_prompt
    cut = encode_for_training(plain_tok, record, max_length=n_resp + 5, truncation="left")
    assert cut["input_ids"] == full["input_ids"][-(n_resp + 5):]
    assert cut["labels"][:5] == [IGNORE_INDEX] * 5 and cut["labels"][5:] == full["labels"][n_prompt:]
    # shorter than the response: no prompt left, response end (and EOS) dropped
    tiny = encode_for_training(plain_tok, record, max_length=3, truncation="left")
    assert tiny["input_ids"] == full["input_ids"][n_prompt:n_prompt + 3]
    assert tiny["labels"] == tiny["input_ids"]


def test_truncation_right_and_error(plain_tok):
    record = _record()
    full = encode_for_training(plain_tok, record, max_length=None)
    n = len(full["input_ids"])
    right = encode_for_training(plain_tok, record, max_length=n - 4, truncation="right")
    assert right["input_ids"] == full["input_ids"][: n - 4] and right["labels"] == full["labels"][: n - 4]
    assert encode_for_training(plain_tok, record, max_length=n, truncation="error") == full
    with pytest.raises(ValueError, match=rf"record 'r-0' has {n} tokens .* max_length={n - 1}"):
        encode_for_training(plain_tok, record, max_length=n - 1, truncation="error")
    with pytest.raises(ValueError, match="unknown truncation 'middle'; use one of left, right, error"):
        encode_for_training(plain_tok, record, truncation="middle")
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        encode_for_training(plain_tok, record, max_length=0)


def test_generation_prompt_left_truncation_and_plain_strings(chat_tok):
    ids = encode_for_generation(chat_tok, "What is 12 + 30?")
    assert ids == encode_for_generation(chat_tok, _record())
    assert encode_for_generation(chat_tok, "What is 12 + 30?", max_length=4) == ids[-4:]
    assert chat_tok.decode(ids) == "<s><|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(TypeError, match="expected a Record or a prompt string"):
        encode_for_generation(chat_tok, 42)


def test_missing_eos_is_a_clear_error(plain_tok):
    tok = _tokenizer(chat_template=None)
    tok.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        encode_for_training(tok, _record())


def test_broken_chat_template_names_the_roles(chat_tok):
    tok = _tokenizer(chat_template="{{ raise_exception('System role not supported') }}")
    with pytest.raises(ValueError, match=r"chat template failed on roles \['system', 'user'\].*System role"):
        format_prompt(tok, "hi", system="sys")


def test_collate_pads_right_for_training_and_left_for_generation():
    a = {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]}
    b = {"input_ids": [8], "attention_mask": [1], "labels": [8]}
    right = collate([a, b], pad_token_id=0)
    assert torch.equal(right["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert torch.equal(right["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert torch.equal(right["labels"], torch.tensor([[-100, 6, 7], [8, -100, -100]]))
    assert all(t.dtype == torch.long for t in right.values())
    left = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], pad_token_id=0, padding_side="left")
    assert set(left) == {"input_ids", "attention_mask"}
    assert torch.equal(left["input_ids"], torch.tensor([[5, 6, 7], [0, 0, 8]]))
    assert torch.equal(left["attention_mask"], torch.tensor([[1, 1, 1], [0, 0, 1]]))
    padded = collate([a, b], pad_token_id=9, pad_to_multiple_of=4)
    assert padded["input_ids"].shape == (2, 4) and padded["input_ids"][1].tolist() == [8, 9, 9, 9]


def test_collate_rejects_bad_batches():
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'"):
        collate([{"input_ids": [1]}], pad_token_id=0, padding_side="middle")
    with pytest.raises(ValueError, match="pad_token_id is None"):
        collate([{"input_ids": [1]}], pad_token_id=None)
    with pytest.raises(ValueError, match="no features"):
        collate([], pad_token_id=0)
    with pytest.raises(ValueError, match="some features have labels"):
        collate([{"input_ids": [1], "labels": [1]}, {"input_ids": [2]}], pad_token_id=0)
    with pytest.raises(ValueError, match="feature 0: labels has length 2 but input_ids has 1"):
        collate([{"input_ids": [1], "labels": [1, 2]}], pad_token_id=0)


def test_encoded_batch_trains_the_tiny_model_on_response_tokens_only(tiny):
    """End to end with the built-in tiny model: the collated batch gives the same loss as a naive
    per-token cross-entropy over response tokens only."""
    model, tok = tiny
    records = [_record(), _record(prompt="Name a colour.", rationale=None, answer="Blue")]
    batch = collate([encode_for_training(tok, r, max_length=64) for r in records],
                    pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        out = model(**batch)
    logp = torch.log_softmax(out.logits.float(), -1)
    total, count = 0.0, 0
    for row in range(2):
        for t in range(1, batch["input_ids"].shape[1]):
            target = batch["labels"][row, t].item()
            if target != IGNORE_INDEX:
                total -= logp[row, t - 1, target].item()
                count += 1
    assert count == len(tok("12 + 30 = 42.\n#### 42")["input_ids"]) + 1 + len(tok("Blue")["input_ids"]) + 1
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)


@pytest.mark.integration
@pytest.mark.xdist_group("smollm2")  # one SmolLM2 load per worker, shared with the other SmolLM2 tests
def test_smollm2_chat_template_encoding_and_left_padded_generation(smollm2):
    """SmolLM2-Instruct's real template (it adds a default system turn): exact label boundary, and a
    left-padded prompt generates in a batch exactly what it generates alone."""
    model, tok = smollm2
    record = _record(prompt="What is 2+3?", rationale="2 + 3 = 5. The answer is 5.", answer="5")
    enc = encode_for_training(tok, record)
    prompt_ids = encode_for_generation(tok, record)
    assert tok.decode(prompt_ids).endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert enc["input_ids"][: len(prompt_ids)] == prompt_ids
    targets = enc["labels"][len(prompt_ids):]
    assert tok.decode(targets) == "2 + 3 = 5. The answer is 5.<|im_end|>"
    prompts = [encode_for_generation(tok, q) for q in ("What is 2+3?", "Name the capital of France in one word.")]
    batch = collate([{"input_ids": p} for p in prompts], pad_token_id=tok.pad_token_id, padding_side="left")
    assert len(prompts[0]) < len(prompts[1])  # so row 0 is the left-padded one
    with torch.no_grad():
        together = model.generate(**batch, do_sample=False, max_new_tokens=6, pad_token_id=tok.pad_token_id)
        alone = model.generate(torch.tensor([prompts[0]]), do_sample=False, max_new_tokens=6,
                               pad_token_id=tok.pad_token_id)
    new = alone[0, len(prompts[0]):].tolist()
    batched = together[0, batch["input_ids"].shape[1]:].tolist()
    # a row that stopped at EOS is filled with pad tokens while the other row goes on
    assert batched[: len(new)] == new and set(batched[len(new):]) <= {tok.pad_token_id}
