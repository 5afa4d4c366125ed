"""``check_compatible``: logit KD compares distributions over one shared vocabulary.

Teachers and students with different tokenizers are distilled with the cross-vocabulary losses
(``loss=span_aligned`` or ``loss=uld``), which pair the two tokenizations of each example instead
(:mod:`kdlens.distill._cross_tokenizer`); :func:`same_vocabulary` decides which path a run takes.
"""

from __future__ import annotations

__all__ = ["check_compatible", "same_vocabulary", "CROSS_TOKENIZER_HINT"]

#: what to do when the tokenizers differ (part of every error that says so)
CROSS_TOKENIZER_HINT = (
    "To distill across tokenizers use loss=span_aligned (pairs the tokens of both tokenizations through the "
    "text they cover: KD over the shared vocabulary, ULD elsewhere) or loss=uld (Universal Logit Distillation, "
    "Boizard et al. 2024: sorted probabilities, no vocabulary mapping), with kd weight < 1 to keep the student's "
    "CE; or pick a student from the teacher's family, or use sequence-level / black-box KD on the teacher's text."
)


def same_vocabulary(teacher_tokenizer, student_tokenizer) -> bool:
    """Whether both tokenizers map the same tokens to the same ids (added tokens included)."""
    return teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()


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
        When the vocabularies differ (naming both sizes, the first differing tokens and the
        cross-tokenizer losses to use instead), or a head is smaller than its tokenizer.
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
            f"{only_teacher}, student-only {only_student}. Logit KD needs one vocabulary. {CROSS_TOKENIZER_HINT}"
        )
    return min(teacher_width, student_width)
