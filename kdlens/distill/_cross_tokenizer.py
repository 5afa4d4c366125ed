"""Word-level KD between a teacher and a student that tokenize differently.

When the tokenizers differ and the loss is a cross-vocabulary one (``loss=uld`` or
``loss=span_aligned``), the run takes this path instead of :func:`kdlens.models.check_compatible`:

1. **Two tokenizations.** Each training example is encoded a second time with the teacher's
   tokenizer and chat template (:func:`kdlens.data.encode_for_training`), so the teacher reads its
   own format; the response text is the same for both.
2. **Byte spans.** Every response token gets the UTF-8 byte span of the response it covers, from
   the bytes each token id stands for (:func:`token_bytes`: GPT-2 byte-level tokens through the
   byte map, SentencePiece-style ``"▁"`` tokens and ``<0xNN>`` byte fallbacks as the bytes they
   decode to). The concatenated bytes must reproduce the response (a SentencePiece dummy-prefix space
   is allowed); a response that does not is left without KD signal and counted.
3. **Alignment.** Walking both span lists, a group closes wherever both tokenizations have a token
   boundary at the same byte (TRL GOLD's ``_align_by_byte_offsets``): each group is a run of
   student tokens and a run of teacher tokens covering the same text. The final EOS tokens form one
   more group. Tokens past the shorter (truncated) side are unaligned.
4. **Loss** (per group, placed on the group's first student position; token mean over the
   student's target tokens, as every kdlens loss):

   * ``span_aligned``: one student token and one teacher token (a "1:1" group, the *aligned* tokens)
     -> :func:`kdlens.losses.span_aligned` on their two distributions, with the shared vocabulary
     (:func:`shared_vocabulary`: token ids whose strings are the same bytes, plus the EOS pair);
     several tokens on a side -> ``uld_weight`` x :func:`kdlens.losses.sorted_l1` of the merged
     probabilities, ``p(y | prefix) * prod_j p(t_j | ...)`` over the group's first position (the
     chain rule on the actual continuation, as GOLD's ``_merge_probabilities_with_alignment_groups``);
   * ``uld``: the paper's pairing (Boizard et al. 2024): the i-th target token of the student with the
     i-th of the teacher, up to the shorter, compared by :func:`kdlens.losses.uld`.

The run manifest records the fractions of student target tokens that were aligned 1:1, merged,
paired (ULD) or left without a teacher counterpart, and the size of the shared vocabulary.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kdlens.distill._methods import TeacherOutput
from kdlens.teacher import NoiseKey, add_noise

__all__ = ["token_bytes", "shared_vocabulary", "byte_spans", "align_spans", "uses_cross_tokenizer",
           "CrossTokenizerTeacher", "CrossTokenizerBatch", "ExampleAlignment"]

_BYTE_FALLBACK = "<0x"


def _decoder_types(tokenizer) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    found, stack = set(), [decoder]
    while stack:
        node = stack.pop()
        found.add(node.get("type"))
        stack.extend(node.get("decoders") or [])
    return found


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items() if added.special)
    return ids


def token_bytes(tokenizer) -> list[bytes | None]:
    """The UTF-8 bytes each token id stands for in text (None for special tokens).

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase

    Returns
    -------
    list of bytes or None, one per id in ``range(len(tokenizer))``
        Byte-level BPE (GPT-2, SmolLM2, Qwen, ``tiny``): each character through the inverse GPT-2
        byte map. SentencePiece style (Gemma, Llama-2, ``tiny-b``): ``"▁"`` is a space and
        ``<0xNN>`` is byte NN. Added non-special tokens (Gemma's ``"\\n\\n"``) are their literal text.
        Other tokenizers: ``convert_tokens_to_string`` of the token alone. None marks control tokens
        (BOS, EOS, pad, chat markers), which cover no text.
    """
    from kdlens.models._tiny import bytes_to_unicode

    size = len(tokenizer)
    id_to_token: list[str | None] = [None] * size
    for token, index in tokenizer.get_vocab().items():
        if 0 <= index < size:
            id_to_token[index] = token
    special = _special_ids(tokenizer)
    literal = {i for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items() if not added.special}
    kinds = _decoder_types(tokenizer)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()} if "ByteLevel" in kinds else None
    sentencepiece = bool(kinds & {"Metaspace", "ByteFallback", "Replace"})
    out: list[bytes | None] = []
    for index, token in enumerate(id_to_token):
        if token is None or index in special:
            out.append(None)
        elif index in literal:
            out.append(token.encode("utf-8"))
        elif byte_of is not None and all(char in byte_of for char in token):
            out.append(bytes(byte_of[char] for char in token))
        elif sentencepiece and token.startswith(_BYTE_FALLBACK) and token.endswith(">") and len(token) == 6:
            out.append(bytes([int(token[3:5], 16)]))
        elif sentencepiece:
            out.append(token.replace("▁", " ").encode("utf-8"))
        else:
            out.append(tokenizer.convert_tokens_to_string([token]).encode("utf-8"))
    return out


def shared_vocabulary(teacher_tokenizer, student_tokenizer, *, teacher_bytes: Sequence[bytes | None] | None = None,
                      student_bytes: Sequence[bytes | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of teacher and student token ids that stand for the same text.

    Two tokens are shared when :func:`token_bytes` gives both the same bytes (``"Ġthe"`` of a
    byte-level vocabulary and ``"▁the"`` of a SentencePiece one are both ``b" the"``). When one side
    has several ids for the same bytes (a byte-fallback ``<0x0A>`` and ``"\\n"``), the id that is not
    a byte fallback, then the smallest, represents them. The two EOS tokens are paired as well:
    both end the response.

    Returns
    -------
    student_ids, teacher_ids : Tensor, long [S]
        ``student_ids[j]`` and ``teacher_ids[j]`` are the same string, sorted by student id.
    """
    def canonical(tokenizer, table) -> dict[bytes, int]:
        vocab_tokens = {index: token for token, index in tokenizer.get_vocab().items()}
        best: dict[bytes, int] = {}
        for index, text in enumerate(table):
            if not text:
                continue
            fallback = str(vocab_tokens.get(index, "")).startswith(_BYTE_FALLBACK)
            current = best.get(text)
            if current is None:
                best[text] = index
            elif str(vocab_tokens.get(current, "")).startswith(_BYTE_FALLBACK) and not fallback:
                best[text] = index
        return best

    teacher_bytes = token_bytes(teacher_tokenizer) if teacher_bytes is None else teacher_bytes
    student_bytes = token_bytes(student_tokenizer) if student_bytes is None else student_bytes
    teacher_map = canonical(teacher_tokenizer, teacher_bytes)
    pairs = {s: teacher_map[text] for text, s in canonical(student_tokenizer, student_bytes).items()
             if text in teacher_map}
    s_eos, t_eos = student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id
    if s_eos is not None and t_eos is not None and s_eos not in pairs and t_eos not in pairs.values():
        pairs[s_eos] = t_eos
    ordered = sorted(pairs.items())
    return (torch.tensor([s for s, _ in ordered], dtype=torch.long),
            torch.tensor([t for _, t in ordered], dtype=torch.long))


def byte_spans(token_ids: Sequence[int], table: Sequence[bytes | None], response: bytes) -> list[tuple[int, int]] | None:
    """Byte spans ``[start, end)`` of the response that each leading response token covers.

    Parameters
    ----------
    token_ids : sequence of int
        The target tokens of one example, response first (then end-of-turn markers and EOS).
    table : from :func:`token_bytes`
    response : bytes
        The response text (:func:`kdlens.data.response_text`) as UTF-8.

    Returns
    -------
    list of (int, int) or None
        One span per response token, in order, stopping at the first control token or at the end of
        the response; None when their bytes do not spell the start of the response (other than by
        a leading SentencePiece dummy-prefix space, which is then given to no span).
    """
    spans, pos = [], 0
    for k, index in enumerate(token_ids):
        piece = table[index] if 0 <= index < len(table) else None
        if piece is None or pos >= len(response):
            break
        if k == 0 and piece.startswith(b" ") and not response.startswith(b" "):
            piece = piece[1:]  # a dummy prefix: the tokenizer added a space the text does not have
        if response[pos:pos + len(piece)] != piece:
            return None
        spans.append((pos, pos + len(piece)))
        pos += len(piece)
    return spans


def align_spans(student: Sequence[tuple[int, int]], teacher: Sequence[tuple[int, int]]) -> list[tuple[list[int], list[int]]]:
    """Groups of consecutive student and teacher tokens that cover the same bytes.

    Both span lists tile ``[0, end)`` from 0 (:func:`byte_spans`). A group closes where both sides have a
    token boundary at the same byte; tokens after the last common boundary (one side truncated) are
    in no group.

    Returns
    -------
    list of (student token indices, teacher token indices)
    """
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    s_start = t_start = 0
    while i < len(student) and j < len(teacher):
        s_end, t_end = student[i][1], teacher[j][1]
        if s_end < t_end:
            i += 1
        elif t_end < s_end:
            j += 1
        else:
            i += 1
            j += 1
            groups.append((list(range(s_start, i)), list(range(t_start, j))))
            s_start, t_start = i, j
    return groups


@dataclass
class ExampleAlignment:
    """How one example's student target tokens meet the teacher's.

    Positions index the shifted logits ``[:, :-1]`` (position t predicts token t + 1).

    Attributes
    ----------
    one_to_one : list of (int, int)
        (student position, teacher position) of groups of one token on each side.
    merged : list of (list of int, list of int)
        Student and teacher positions of groups with several tokens on a side.
    student_tokens, teacher_tokens : dict of int -> int
        Every target token id of each side, by position (``tokens[p]`` is predicted at position p).
    paired : list of (int, int)
        (student position, teacher position) of the i-th target token of each (ULD's pairing).
    n_target : int
        Student target tokens.
    spans_ok : bool
        Whether both tokenizations spelled the response (else only ``paired`` is filled).
    """

    one_to_one: list[tuple[int, int]] = field(default_factory=list)
    merged: list[tuple[list[int], list[int]]] = field(default_factory=list)
    student_tokens: dict[int, int] = field(default_factory=dict)
    teacher_tokens: dict[int, int] = field(default_factory=dict)
    paired: list[tuple[int, int]] = field(default_factory=list)
    n_target: int = 0
    spans_ok: bool = True

    @property
    def n_merged(self) -> int:
        return sum(len(s) for s, _ in self.merged)


def _targets(feature) -> list[int]:
    """Shifted positions of the target tokens of an encoded example."""
    return [i - 1 for i, label in enumerate(feature["labels"]) if label != -100 and i > 0]


def align_example(student_feature, teacher_feature, response: str, *, student_bytes, teacher_bytes,
                  student_eos: int | None, teacher_eos: int | None) -> ExampleAlignment:
    """The :class:`ExampleAlignment` of one example encoded by both tokenizers."""
    s_pos, t_pos = _targets(student_feature), _targets(teacher_feature)
    s_ids = [student_feature["input_ids"][p + 1] for p in s_pos]
    t_ids = [teacher_feature["input_ids"][p + 1] for p in t_pos]
    out = ExampleAlignment(student_tokens=dict(zip(s_pos, s_ids, strict=True)),
                           teacher_tokens=dict(zip(t_pos, t_ids, strict=True)),
                           paired=list(zip(s_pos, t_pos, strict=False)), n_target=len(s_pos))
    text = response.encode("utf-8")
    s_spans, t_spans = byte_spans(s_ids, student_bytes, text), byte_spans(t_ids, teacher_bytes, text)
    if s_spans is None or t_spans is None:
        out.spans_ok = False
        return out
    for s_group, t_group in align_spans(s_spans, t_spans):
        s_group_pos, t_group_pos = [s_pos[k] for k in s_group], [t_pos[k] for k in t_group]
        if len(s_group) == len(t_group) == 1:
            out.one_to_one.append((s_group_pos[0], t_group_pos[0]))
        else:
            out.merged.append((s_group_pos, t_group_pos))
    # both responses complete and each followed directly by its EOS: the two EOS predictions pair up
    if _ends_with_eos(s_spans, s_ids, len(text), student_eos) and _ends_with_eos(t_spans, t_ids, len(text), teacher_eos):
        out.one_to_one.append((s_pos[len(s_spans)], t_pos[len(t_spans)]))
    return out


def _ends_with_eos(spans: list[tuple[int, int]], ids: list[int], length: int, eos: int | None) -> bool:
    covered = spans[-1][1] if spans else 0
    return covered == length and len(spans) < len(ids) and ids[len(spans)] == eos


def uses_cross_tokenizer(config, teacher_tokenizer, student_tokenizer) -> bool:
    """Whether a run distills across tokenizers (different vocabularies and a cross-vocabulary loss).

    Raises ``ValueError`` when the tokenizers differ, the loss works across vocabularies, but the run
    asks for something this path cannot give (a method other than ``word_kd``, a teacher cache).
    Different tokenizers with a same-vocabulary loss return False: :func:`kdlens.models.check_compatible`
    then explains which losses to use.
    """
    from kdlens.losses import LOSSES
    from kdlens.models import same_vocabulary

    if same_vocabulary(teacher_tokenizer, student_tokenizer) or not LOSSES[config.loss].cross_vocabulary:
        return False
    if config.method != "word_kd":
        raise ValueError(f"teacher and student tokenizers differ: loss={config.loss} distills across tokenizers "
                         f"with method=word_kd only, not method={config.method} (its teacher must read the student's "
                         "tokens); use method=word_kd, or a teacher with the student's tokenizer")
    if config.teacher_source != "online":
        raise ValueError(f"teacher and student tokenizers differ: loss={config.loss} runs the teacher on its own "
                         f"tokenization of each example, which a teacher cache (teacher_source={config.teacher_source}) "
                         "does not hold; use teacher_source=online")
    kd_weight = config.kd_weight
    if config.loss == "uld" and kd_weight == 1.0:
        warnings.warn("loss=uld with KD weight 1 trains on ULD alone; ULD is defined together with the student's "
                      "cross-entropy (CE + lambda * ULD, Boizard et al. 2024): set the KD weight below 1 "
                      "(weight = lambda / (1 + lambda))", stacklevel=2)
    return True


class CrossTokenizerTeacher:
    """The teacher signal of a cross-tokenizer run: the teacher reads its own tokenization.

    Parameters
    ----------
    teacher : nn.Module
        Teacher causal LM (eval mode, no grad), on ``device``.
    teacher_tokenizer, student_tokenizer : tokenizers of each model
    features : list of dict
        The student's encoded training examples (the loop's features, in dataset order).
    records : list of Record
        The records they were encoded from.
    loss : {"uld", "span_aligned"}
    loss_params : dict
        Parameters of ``loss`` (``divergence``, ``uld_weight`` for ``span_aligned``).
    max_length : int
        Maximum tokens of each teacher sequence (the run's ``max_length``).
    system : str or None
        The run's system prompt, in the teacher's chat template.
    autocast : callable
        ``accelerator.autocast`` (a context manager factory) for the teacher's forward.

    Calling it like the loop's teacher function, ``teacher(batch, example_indices)``, returns a
    :class:`kdlens.distill.TeacherOutput` whose ``logits`` is a :class:`CrossTokenizerBatch`.
    """

    def __init__(self, teacher, teacher_tokenizer, student_tokenizer, features: Sequence[dict], records: Sequence[Any],
                 *, loss: str, loss_params: dict | None = None, max_length: int, system: str | None = None,
                 autocast=None) -> None:
        from kdlens.data import collate, encode_for_training, response_text
        from kdlens.losses import LOSSES

        if not LOSSES[loss].cross_vocabulary:
            raise ValueError(f"loss={loss} compares one vocabulary; use one of uld, span_aligned across tokenizers")
        self.teacher, self.loss, self.loss_params = teacher, loss, dict(loss_params or {})
        self._autocast = autocast
        self._collate, self._pad = collate, teacher_tokenizer.pad_token_id
        s_bytes, t_bytes = token_bytes(student_tokenizer), token_bytes(teacher_tokenizer)
        self.student_ids, self.teacher_ids = shared_vocabulary(teacher_tokenizer, student_tokenizer,
                                                               teacher_bytes=t_bytes, student_bytes=s_bytes)
        self.teacher_features = [encode_for_training(teacher_tokenizer, record, max_length=max_length, system=system)
                                 for record in records]
        self.alignments = [align_example(sf, tf, response_text(record), student_bytes=s_bytes, teacher_bytes=t_bytes,
                                         student_eos=student_tokenizer.eos_token_id,
                                         teacher_eos=teacher_tokenizer.eos_token_id)
                           for sf, tf, record in zip(features, self.teacher_features, records, strict=True)]
        self.vocab_sizes = (len(student_tokenizer), len(teacher_tokenizer))
        failed = sum(not a.spans_ok for a in self.alignments)
        if loss == "span_aligned" and failed:
            warnings.warn(f"{failed} of {len(self.alignments)} training responses could not be split into byte spans by "
                          "both tokenizers; they get no span_aligned KD signal (counted as unaligned in the manifest)",
                          stacklevel=2)

    def summary(self) -> dict[str, Any]:
        """What the manifest records: token fractions, shared vocabulary, losses."""
        total = sum(a.n_target for a in self.alignments) or 1
        one = sum(len(a.one_to_one) for a in self.alignments)
        merged = sum(a.n_merged for a in self.alignments)
        paired = sum(len(a.paired) for a in self.alignments)
        covered = paired if self.loss == "uld" else one + merged
        return {
            "loss": self.loss,
            "student_vocab": self.vocab_sizes[0],
            "teacher_vocab": self.vocab_sizes[1],
            "shared_vocab": int(self.student_ids.numel()),
            "student_target_tokens": sum(a.n_target for a in self.alignments),
            "teacher_target_tokens": sum(len(a.teacher_tokens) for a in self.alignments),
            # fractions of the student's target tokens
            "aligned_fraction": one / total,
            "merged_fraction": merged / total,
            "paired_fraction": paired / total,
            "unaligned_fraction": 1.0 - covered / total,
            "examples_without_spans": sum(not a.spans_ok for a in self.alignments),
        }

    def __call__(self, batch, example_indices, *, hidden: bool = False, attentions: bool = False) -> TeacherOutput:
        if hidden or attentions:
            raise ValueError("hidden-state and attention matching need one tokenizer (positions must match); "
                             "cross-tokenizer KD supports method=word_kd only")
        device = batch["input_ids"].device
        rows = [self.teacher_features[i] for i in example_indices]
        teacher_batch = self._collate(rows, pad_token_id=self._pad, padding_side="right")
        with torch.no_grad(), (self._autocast() if self._autocast is not None else _null()):
            logits = self.teacher(input_ids=teacher_batch["input_ids"].to(device),
                                  attention_mask=teacher_batch["attention_mask"].to(device)).logits
        signal = CrossTokenizerBatch(teacher_logits=logits[:, :-1], alignments=[self.alignments[i] for i in example_indices],
                                     loss=self.loss, loss_params=self.loss_params, student_ids=self.student_ids,
                                     teacher_ids=self.teacher_ids)
        return TeacherOutput(logits=signal)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@dataclass
class CrossTokenizerBatch:
    """One micro-batch of a cross-tokenizer teacher: its logits on its own tokens, and the pairing.

    Attributes
    ----------
    teacher_logits : Tensor [B, T_t - 1, V_t]
        Raw teacher logits on the teacher's tokenization of each row.
    alignments : list of ExampleAlignment, one per row
    loss : {"uld", "span_aligned"}
    loss_params : dict
    student_ids, teacher_ids : Tensor, long [S]
        The shared vocabulary.
    """

    teacher_logits: torch.Tensor
    alignments: list[ExampleAlignment]
    loss: str
    loss_params: dict
    student_ids: torch.Tensor
    teacher_ids: torch.Tensor

    def kd_token_loss(self, loss_fn, student_logits: torch.Tensor, *, mask: torch.Tensor, temperature: float = 1.0,
                      scale_by_temperature_squared: bool = False, sigma: float = 0.0,
                      noise: NoiseKey | None = None, **_: Any) -> torch.Tensor:
        """Per-token KD loss ``[B, T - 1]`` on the student's positions (0 where no teacher counterpart).

        The signature mirrors :func:`kdlens.teacher.kd_token_loss` (which hands over to it): noise sigma
        is added to the teacher's raw logits before tau (drawn per (seed, step, example, teacher position),
        :func:`kdlens.teacher.add_noise`), each group's value is put on the group's first
        student position, and ``tau**2`` multiplies every value when asked.
        """
        from kdlens.losses import sorted_l1

        student = student_logits
        teacher = add_noise(self.teacher_logits, sigma, key=noise)
        out = torch.zeros(student.shape[:-1], dtype=torch.float32, device=student.device)
        scale = temperature * temperature if scale_by_temperature_squared else 1.0
        if self.loss == "uld":
            rows = [(b, s, t) for b, a in enumerate(self.alignments) for s, t in a.paired]
            if rows:
                b, s, t = (torch.tensor(x, device=student.device) for x in zip(*rows, strict=True))
                values = loss_fn(student[b, s], teacher[b, t], temperature=temperature,
                                 scale_by_temperature_squared=scale_by_temperature_squared, reduction="none")
                out = out.index_put((b, s), values.float(), accumulate=True)
            return torch.where(mask, out, torch.zeros((), device=out.device))
        ids = (self.student_ids.to(student.device), self.teacher_ids.to(student.device))
        rows = [(b, s, t) for b, a in enumerate(self.alignments) for s, t in a.one_to_one]
        if rows:
            b, s, t = (torch.tensor(x, device=student.device) for x in zip(*rows, strict=True))
            values = loss_fn(student[b, s], teacher[b, t], student_ids=ids[0], teacher_ids=ids[1],
                             temperature=temperature, scale_by_temperature_squared=scale_by_temperature_squared,
                             reduction="none")
            out = out.index_put((b, s), values.float(), accumulate=True)
        groups = [(b, s_pos, t_pos) for b, a in enumerate(self.alignments) for s_pos, t_pos in a.merged]
        weight = float(self.loss_params.get("uld_weight", 1.0))
        if groups and weight:
            q = _merged_probs(student, [(b, s_pos, self.alignments[b].student_tokens) for b, s_pos, _ in groups],
                              temperature)
            p = _merged_probs(teacher, [(b, t_pos, self.alignments[b].teacher_tokens) for b, _, t_pos in groups],
                              temperature)
            values = weight * scale * sorted_l1(q, p)
            b = torch.tensor([g[0] for g in groups], device=student.device)
            first = torch.tensor([g[1][0] for g in groups], device=student.device)
            out = out.index_put((b, first), values.float(), accumulate=True)
        return torch.where(mask, out, torch.zeros((), device=out.device))


def _merged_probs(logits: torch.Tensor, groups: list[tuple[int, list[int], dict[int, int]]],
                  temperature: float) -> torch.Tensor:
    """Merged probabilities of token groups: ``p(y | first position) * prod_{j > 1} p(token_j | position j)``.

    Parameters
    ----------
    logits : Tensor [B, T, V]
    groups : list of (row, positions, tokens)
        ``tokens[position]`` is the actual token predicted at ``position``.

    Returns
    -------
    Tensor, float32 [G, V]
        Not normalized: the entry of the group's actual first token is the probability of the
        group's whole text; the others are scaled alike (the chain of the actual continuation).
    """
    device = logits.device
    rows = torch.tensor([g[0] for g in groups], device=device)
    first = torch.tensor([g[1][0] for g in groups], device=device)
    log_first = torch.log_softmax(logits[rows, first].float() / temperature, dim=-1)
    chain = [(k, g[0], p, g[2][p]) for k, g in enumerate(groups) for p in g[1][1:]]
    if chain:
        k, b, p, tok = (torch.tensor(x, device=device) for x in zip(*chain, strict=True))
        token_lp = torch.log_softmax(logits[b, p].float() / temperature, dim=-1).gather(-1, tok[:, None]).squeeze(-1)
        total = torch.zeros(len(groups), dtype=token_lp.dtype, device=device).index_add(0, k, token_lp)
        log_first = log_first + total[:, None]
    return log_first.exp()

