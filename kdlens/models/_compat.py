"""``check_compatible``: logit KD compares distributions over one shared vocabulary."""

from __future__ import annotations

__all__ = ["check_compatible"]


def _head_size(tokenizer, size: int | None, role: str) -> int:
    n_tokens = len(tokenizer)
    if size is None:
        return n_tokens
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{role}_vocab_size must be a positive int, got {size!r}")
    if size < n_tokens:
        raise ValueError(f"the {role} LM head has {size} rows but its tokenizer has {n_tokens} tokens: token ids "
                         f"{size}..{n_tokens - 1} have no logit; resize the embeddings (model.resize_token_embeddings)")
    return size


def check_compatible(teacher_tokenizer, student_tokenizer, *, teacher_vocab_size: int | None = None,
                     student_vocab_size: int | None = None) -> int:
    """Check that teacher and student share one vocabulary; return the logit width to compare.

    Logit KD sums over token ids, so id ``i`` must mean the same token for both models. Heads are
    often padded past the tokenizer (e.g. 151936 vs 152064 rows for Qwen2.5 models of different sizes):
    those rows have no token, so truncating both heads to the common width loses nothing.

    Parameters
    ----------
    teacher_tokenizer, student_tokenizer : transformers.PreTrainedTokenizerBase
        Compared by their token -> id maps (added tokens included), not by identity.
    teacher_vocab_size, student_vocab_size : int, optional
        Rows of each LM head (``model.config.vocab_size``, the logits' last dimension); default
        ``len(tokenizer)``. Each must cover its tokenizer.

    Returns
    -------
    int
        ``min(teacher_vocab_size, student_vocab_size)``: slice both logits to ``[..., :width]``.

    Raises
    ------
    ValueError
        When the vocabularies differ (naming both sizes and the first differing tokens), or a head is
        smaller than its tokenizer.
    """
    teacher_width = _head_size(teacher_tokenizer, teacher_vocab_size, "teacher")
    student_width = _head_size(student_tokenizer, student_vocab_size, "student")
    teacher_vocab = teacher_tokenizer.get_vocab()
    student_vocab = student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        only_teacher = sorted(set(teacher_vocab.items()) - set(student_vocab.items()), key=lambda kv: kv[1])[:3]
        only_student = sorted(set(student_vocab.items()) - set(teacher_vocab.items()), key=lambda kv: kv[1])[:3]
        raise ValueError(
            f"teacher and student tokenizers differ: teacher has {len(teacher_vocab)} tokens (head {teacher_width}), "
            f"student has {len(student_vocab)} tokens (head {student_width}); e.g. teacher-only (token, id) "
            f"{only_teacher}, student-only {only_student}. Logit KD needs one vocabulary: pick a student from the "
            "teacher's family, or use sequence-level / black-box KD on the teacher's generated text."
        )
    return min(teacher_width, student_width)
