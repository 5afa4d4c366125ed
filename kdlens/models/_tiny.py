"""The built-in tiny models: deterministic 2-layer causal LMs with two different tokenizers.

Built locally from a config and a seed (no download), so every test and smoke run anywhere gets
bit-identical weights.

``tiny``
    A Llama whose byte-level tokenizer maps each UTF-8 byte to one token, so any text round-trips,
    with ChatML special tokens and a ChatML chat template like SmolLM2's.
``tiny-b``
    A Gemma-3 whose tokenizer is built the way Gemma's is (SentencePiece-style BPE: spaces become
    ``"▁"``, byte fallback ``<0xNN>`` for anything outside its characters), with a few hundred merges
    (common words, two-digit numbers), Gemma's special tokens and turn template. Its token boundaries
    differ from ``tiny``'s and the two vocabularies overlap only partly, which is what the
    cross-tokenizer losses are tested on.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TINY_ARCHS",
    "TINY_SPECIAL_TOKENS",
    "TINY_CHAT_TEMPLATE",
    "TINY_B_SPECIAL_TOKENS",
    "TINY_B_CHAT_TEMPLATE",
    "bytes_to_unicode",
    "tiny_config",
    "tiny_tokenizer",
    "tiny_model",
    "tiny_b_tokenizer",
    "tiny_b_model",
    "seeded_model",
    "wrap_tokenizer",
]

#: special tokens first (ids 0..3), as in SmolLM2, then the 256 bytes (ids 4..259)
TINY_SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")
_EOS_ID, _PAD_ID = 2, 3
TINY_VOCAB_SIZE = len(TINY_SPECIAL_TOKENS) + 256

#: ChatML, the format of SmolLM2-Instruct (without its default system prompt)
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: causal-LM architectures tiny_config can build -> transformers config class name
TINY_ARCHS: dict[str, str] = {
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "gemma3": "Gemma3TextConfig",
}

_MAX_POSITIONS = 512


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ``ByteLevel`` pre-tokenizes into)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def tiny_tokenizer():
    """The byte-level tokenizer of the ``tiny`` model.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        260 tokens: ``<|endoftext|>`` (0), ``<|im_start|>`` (1), ``<|im_end|>`` (2, the EOS token),
        ``<pad>`` (3, the pad token), then byte ``b`` at id ``4 + b``. No merges, so every text
        round-trips through ``encode``/``decode`` byte for byte. Right padding; a ChatML chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_chars = bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIAL_TOKENS)}
    vocab.update({byte_chars[b]: len(TINY_SPECIAL_TOKENS) + b for b in range(256)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: with no merges the GPT-2 split would not change the tokens, only cost time
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return wrap_tokenizer(backend, TINY_SPECIAL_TOKENS, eos="<|im_end|>", pad="<pad>",
                          additional=("<|im_start|>", "<|endoftext|>"), chat_template=TINY_CHAT_TEMPLATE,
                          max_length=_MAX_POSITIONS)


def wrap_tokenizer(backend: Any, specials: tuple[str, ...], *, eos: str, pad: str, additional: tuple[str, ...],
                   chat_template: str, max_length: int, unk: str | None = None):
    """A ``PreTrainedTokenizerFast`` around a ``tokenizers.Tokenizer`` whose special tokens are ``specials``.

    The special tokens are added to the backend (never split, never normalized); EOS, pad, unk
    and the ``additional`` special tokens are named. Right padding, no clean-up of spaces on
    decode (which would alter text), and ``chat_template``.
    """
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        pad_token=pad,
        **({"unk_token": unk} if unk is not None else {}),
        additional_special_tokens=list(additional),
        chat_template=chat_template,
        model_max_length=max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def tiny_config(arch: str = "llama", **overrides: Any):
    """Config of a tiny causal LM: 2 layers, hidden 64, 4 heads (2 KV heads), MLP 128, vocabulary 260.

    Parameters
    ----------
    arch : {"llama", "qwen2", "gemma3"}
        Architecture family (``gemma3`` is the text-only ``Gemma3TextConfig``).
    **overrides
        Config attributes to change, e.g. ``num_hidden_layers=6``. For gemma3, ``layer_types``
        alternates sliding and full attention unless given.

    Returns
    -------
    transformers.PretrainedConfig
    """
    import transformers

    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: {', '.join(TINY_ARCHS)}")
    params: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=_MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=_EOS_ID,
        pad_token_id=_PAD_ID,
    )
    if arch == "gemma3":
        params.update(head_dim=16, query_pre_attn_scalar=16, sliding_window=16)
    params.update(overrides)
    if arch == "gemma3" and "layer_types" not in overrides:
        # alternate so that pruning tests see both kinds of layer (real Gemma3 uses 5 sliding : 1 full)
        params["layer_types"] = [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(params["num_hidden_layers"])
        ]
    return getattr(transformers, TINY_ARCHS[arch])(**params)


def tiny_model(seed: int = 0, *, arch: str = "llama", **overrides: Any):
    """A deterministic tiny causal LM and its tokenizer (the built-in ``tiny``).

    Parameters
    ----------
    seed : int
        Seeds the weight initialization; the same seed gives bit-identical weights on every
        machine, without touching the global RNG state.
    arch : {"llama", "qwen2", "gemma3"}
        Architecture family, see :func:`tiny_config`.
    **overrides
        Passed to :func:`tiny_config`.

    Returns
    -------
    model : transformers.PreTrainedModel
        float32, on CPU, in eval mode; logits have shape ``[batch, seq, 260]``.
    tokenizer : transformers.PreTrainedTokenizerFast
        See :func:`tiny_tokenizer`.
    """
    return seeded_model(tiny_config(arch, **overrides), seed, name="tiny"), tiny_tokenizer()


def seeded_model(config: Any, seed: int, *, name: str):
    """A float32 CPU causal LM built from ``config`` with weights drawn under ``torch.manual_seed(seed)``.

    The global RNG state is left untouched (``fork_rng``); the generation config stops at the
    config's EOS and pads with its pad id; ``name_or_path`` is ``name``. Returned in eval mode.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, bos_token_id=None
    )
    model.name_or_path = name
    return model.eval()


#: ``tiny-b``'s special tokens at ids 0..4, as in Gemma; ``<end_of_turn>`` ends a turn and is the EOS token
TINY_B_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>")
_B_PAD_ID, _B_BOS_ID, _B_EOS_ID = 0, 2, 4

#: Gemma's turn format (the assistant speaks as "model"), BOS written by the template
TINY_B_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# words merged into single tokens (with and without the leading "▁"), chosen from the words of
# arithmetic rationales so that tiny-b's tokens span several of tiny's byte tokens
_B_WORDS = (
    "the", "The", "is", "answer", "plus", "minus", "times", "and", "of", "to", "in", "What", "How", "many",
    "total", "each", "has", "are", "was", "for", "with", "then", "so", "there", "apples", "left",
)


def _tiny_b_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Token -> id map and BPE merges of ``tiny-b`` (deterministic, built in a fixed order)."""
    vocab = {token: i for i, token in enumerate(TINY_B_SPECIAL_TOKENS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)  # byte fallback, as in Gemma and Llama-2
    for char in ["▁", "\n", *map(chr, range(0x21, 0x7F))]:
        vocab[char] = len(vocab)
    merges: list[tuple[str, str]] = []

    def merge(left: str, right: str) -> None:
        if left + right not in vocab:
            vocab[left + right] = len(vocab)
            merges.append((left, right))

    for tens in "123456789":
        for units in "0123456789":
            merge(tens, units)
    for word in _B_WORDS:
        piece = word[0]
        for char in word[1:]:  # left to right: every prefix of the word becomes a token
            merge(piece, char)
            piece += char
        merge("▁", word)  # then the word with its leading space, as SentencePiece vocabularies have
    return vocab, merges


def tiny_b_tokenizer():
    """The tokenizer of ``tiny-b``: Gemma-style BPE with byte fallback, different from ``tiny``'s.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Special tokens ``<pad>`` (0, pad), ``<eos>`` (1), ``<bos>`` (2), ``<start_of_turn>`` (3),
        ``<end_of_turn>`` (4, the EOS token); then the 256 byte-fallback tokens ``<0x00>`` ..
        ``<0xFF>``; then ``"▁"`` (a space), ``"\\n"`` and the printable ASCII characters; then the
        merged tokens (two-digit numbers, common words with and without ``"▁"``). Spaces are
        normalized to ``"▁"`` as in Gemma; characters outside the vocabulary (``é``) become their
        UTF-8 bytes, so any text round-trips. Right padding; Gemma's turn template.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab, merges = _tiny_b_vocabulary()
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer = wrap_tokenizer(backend, TINY_B_SPECIAL_TOKENS, eos="<end_of_turn>", pad="<pad>",
                               additional=("<eos>", "<start_of_turn>"), chat_template=TINY_B_CHAT_TEMPLATE,
                               max_length=_MAX_POSITIONS)
    tokenizer.bos_token = "<bos>"
    return tokenizer


def tiny_b_model(seed: int = 0, **overrides: Any):
    """A deterministic tiny Gemma-3 with its own tokenizer (the built-in ``tiny-b``).

    The cross-tokenizer counterpart of :func:`tiny_model`: same size (2 layers, hidden 64), but
    the ``gemma3`` architecture and :func:`tiny_b_tokenizer`'s vocabulary.

    Parameters
    ----------
    seed : int
        Seeds the weight initialization without touching the global RNG state.
    **overrides
        Passed to :func:`tiny_config` (``arch="gemma3"``).

    Returns
    -------
    model : transformers.PreTrainedModel
        float32, CPU, eval mode; logits ``[batch, seq, len(tiny_b_tokenizer())]``.
    tokenizer : transformers.PreTrainedTokenizerFast
    """
    tokenizer = tiny_b_tokenizer()
    params = dict(vocab_size=len(tokenizer), eos_token_id=_B_EOS_ID, pad_token_id=_B_PAD_ID, bos_token_id=_B_BOS_ID)
    model = seeded_model(tiny_config("gemma3", **{**params, **overrides}), seed, name="tiny-b")
    model.generation_config.bos_token_id = _B_BOS_ID
    return model, tokenizer
