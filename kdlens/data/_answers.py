"""Final-answer extraction from generated text, and scoring against a record's gold answer.

Three answer kinds cover the tasks kdlens ships:

``numeric``
    A number. Explicit markers win when present, in this order: the last ``\\boxed{...}``, the last
    ``<answer>...</answer>`` (reasoning-gym's convention), the last GSM8K ``#### N``, the sentence
    after the last "answer is" / "answer:"; the last number inside the first of these that holds
    one is the answer (``"The answer is 62 - 39 = 23."`` -> ``23``). Without markers, the last
    number in the text (the paradox paper's rule). Thousands separators are stripped (``1,234`` ->
    ``1234``); ``$``, units and ``%`` are ignored; a trailing period is not part of the number; a
    minus is a sign only when not glued to a preceding word or digit (``10-3`` yields ``10`` and
    ``3``); a slash fraction without spaces (``3/4``) is one number worth 0.75; a date
    (``1/2/2020``) is no number. A prediction is correct when ``|pred - gold| <= 1e-3``.
``choice``
    A multiple-choice letter A-E: ``\\boxed{C}``, ``<answer>C</answer>``, "answer is (C)",
    "answer: C", "option C", else the last parenthesized ``(C)``, else a text that is just the letter.
    A bare capital letter elsewhere is never taken (math rationales start with "A: ...").
``exact``
    A string: ``<answer>...</answer>``, ``\\boxed{...}``, the rest of the line after "answer is",
    else the last non-empty line. Compared after collapsing whitespace, case-folding and dropping
    a trailing period.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdlens.data._records import Record

__all__ = ["ANSWER_KINDS", "extract_answer", "answers_equal", "same_answer", "infer_kind", "score", "NUMERIC_TOLERANCE",
           "SCORING_MODES", "ScoringMode", "score_as", "harness_strict_match", "harness_strict_match_cot",
           "harness_flexible_extract", "harness_exact_match", "HARNESS_INVALID"]

#: Absolute tolerance of a correct numeric answer (the paradox paper's protocol).
NUMERIC_TOLERANCE = 1e-3

_NUMBER = re.compile(
    r"(?P<date>(?<![\w./])\d+(?:/\d+){2,})|"         # 1/2/2020 is a date, not a number: skipped
    r"(?<![\w.])"                                   # not glued to a word, digit or decimal point
    r"(?:(?<![\w)])-)?"                             # a sign only where it can't be binary minus
    r"(?:\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))"          # integer part with optional thousands commas
    r"(?:\.\d+)?"                                   # decimals
    r"(?:[eE][-+]?\d+)?"                            # exponent
    r"(?:/\d+(?:\.\d+)?)?"                         # a/b fraction
)
_HASH_MARK = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"(?i:answer)\s*(?:is|:|=)")
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")
_ANSWER_TAG = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)
_CHOICE_MARKERS = (
    re.compile(r"(?i:answer)(?:\s+(?i:is))?\s*:?\s*(?i:option\s*)?\(?([A-E])\)?(?![A-Za-z0-9])"),
    re.compile(r"(?i:option|choice)\s*\(?([A-E])\)?(?![A-Za-z0-9])"),
)
_PAREN_LETTER = re.compile(r"\(([A-E])\)")
_BARE_LETTER = re.compile(r"\W*\(?([A-E])\)?\W*")
_CHOICE_GOLD = re.compile(r"\(?[A-E]\)?")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def _last_tag(text: str) -> str | None:
    matches = _ANSWER_TAG.findall(text)
    return matches[-1].strip() if matches else None


def _numbers(text: str) -> list[str]:
    return [m.group(0).replace(",", "") for m in _NUMBER.finditer(text) if m.group("date") is None]


def _to_float(value: str) -> float | None:
    """Parse a number string as kdlens writes it (``"-3.5"``, ``"1,234"``, ``"3/4"``, ``"$36"``)."""
    text = value.strip().replace(",", "").lstrip("$").rstrip(".%").strip()
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            result = float(num) / float(den)
        else:
            result = float(text)
    except (ValueError, ZeroDivisionError):
        return None
    return result if math.isfinite(result) else None


def _answer_line(text: str) -> str | None:
    """The rest of the line after the last "answer is" / "answer:" (None when there is none)."""
    markers = list(_ANSWER_IS.finditer(text))
    return text[markers[-1].end():].split("\n", 1)[0] if markers else None


def _answer_sentence(text: str) -> str | None:
    """The rest of the sentence after the last "answer is" / "answer:" (None when there is none)."""
    line = _answer_line(text)
    end = _SENTENCE_END.search(line) if line is not None else None
    return line[: end.start()] if end else line


def _extract_numeric(text: str) -> str | None:
    hashes = _HASH_MARK.findall(text)
    # the last number of each marked span: "\\boxed{x = 5}", "answer is 62 - 39 = 23",
    # "answer is 6 pieces, or 15 ounces" (the paper's last-number rule, confined to the answer)
    for span in (_last_boxed(text), _last_tag(text), hashes[-1] if hashes else None, _answer_sentence(text)):
        found = _numbers(span) if span is not None else []
        if found:
            return found[-1]
    found = _numbers(text)
    return found[-1] if found else None


def _extract_choice(text: str) -> str | None:
    for inner in (_last_boxed(text), _last_tag(text)):
        if inner is not None:
            match = _BARE_LETTER.fullmatch(inner.replace("\\text{", "").replace("}", ""))
            if match:
                return match.group(1)
    for pattern in _CHOICE_MARKERS:
        found = pattern.findall(text)
        if found:
            return found[-1]
    found = _PAREN_LETTER.findall(text)
    if found:
        return found[-1]
    match = _BARE_LETTER.fullmatch(text)
    return match.group(1) if match else None


def _extract_exact(text: str) -> str | None:
    for inner in (_last_tag(text), _last_boxed(text)):
        if inner is not None and inner.strip():
            return " ".join(inner.split())
    said = _answer_line(text)
    if said is not None:
        value = said.strip().rstrip(".").strip()
        if value:
            return " ".join(value.split())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[-1].split()) if lines else None


_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "numeric": _extract_numeric,
    "choice": _extract_choice,
    "exact": _extract_exact,
}

#: The answer kinds kdlens knows.
ANSWER_KINDS: tuple[str, ...] = tuple(_EXTRACTORS)


def _check_kind(kind: str) -> None:
    if kind not in _EXTRACTORS:
        raise ValueError(f"unknown answer kind {kind!r}; known kinds: {', '.join(ANSWER_KINDS)}")


def extract_answer(text: str, kind: str = "numeric") -> str | None:
    """Extract the final answer of a given kind from generated text.

    Parameters
    ----------
    text : str
        The model's output (a rationale ending in an answer).
    kind : {"numeric", "choice", "exact"}
        See the module docstring for each kind's rules.

    Returns
    -------
    str or None
        ``"1234"``, ``"-3.5"``, ``"3/4"`` for numeric (commas stripped); ``"C"`` for choice; a
        whitespace-collapsed string for exact. None when nothing of that kind is found.
    """
    _check_kind(kind)
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects generated text as str, got {type(text).__name__}")
    return _EXTRACTORS[kind](text)


def _normalize_exact(value: str) -> str:
    return " ".join(value.split()).casefold().rstrip(".").strip()


def _choice_letter(value: str) -> str:
    return value.strip().strip("()").strip().upper()


def same_answer(a: str | None, b: str | None, kind: str | None = None) -> bool:
    """Whether two extracted answers are the same answer: THE definition, shared by scoring and agreement.

    Parameters
    ----------
    a, b : str or None
        Extracted answers (a prediction and a gold answer, or a student's and a teacher's prediction).
    kind : {"numeric", "choice", "exact"} or None
        The task's answer kind (:func:`infer_kind` of its gold answer). None infers it from the two
        answers alone: numeric when both parse as numbers, choice when both are one letter A-E,
        else exact.

    Returns
    -------
    bool
        numeric: ``|a - b| <= 1e-3`` when both parse (fractions, thousands commas, ``$`` and ``%``
        understood: ``"1/2"`` equals ``"0.5"``), else the exact rule; choice: the same letter
        (``"(B)"`` equals ``"B"``); exact: equal after whitespace collapse, case-folding and
        dropping a trailing period. ``None`` never equals anything, not even ``None``. Symmetric.

    Notes
    -----
    Two predictions that each lie within the tolerance of a gold answer may lie 2e-3 apart and so
    not be "the same answer" as each other; extracted answers that close are rare.
    """
    if a is None or b is None:
        return False
    if kind is None:
        if _to_float(a) is not None and _to_float(b) is not None:
            kind = "numeric"
        elif _CHOICE_GOLD.fullmatch(a.strip()) and _CHOICE_GOLD.fullmatch(b.strip()):
            kind = "choice"
        else:
            kind = "exact"
    _check_kind(kind)
    if kind == "numeric":
        x, y = _to_float(a), _to_float(b)
        if x is not None and y is not None:
            return abs(x - y) <= NUMERIC_TOLERANCE
    elif kind == "choice":
        return _choice_letter(a) == _choice_letter(b)
    return _normalize_exact(a) == _normalize_exact(b)


def answers_equal(pred: str | None, gold: str, kind: str = "numeric") -> bool:
    """Whether an extracted answer matches a gold one under the kind's rule (:func:`same_answer`).

    numeric: ``|pred - gold| <= 1e-3`` (fractions and thousands commas understood); choice: same
    letter; exact: equal after whitespace collapse, case-folding and dropping a trailing period.
    ``pred=None`` is never correct.

    Raises
    ------
    ValueError
        ``kind="numeric"`` with a gold answer that is not a number.
    """
    _check_kind(kind)
    if kind == "numeric" and _to_float(gold) is None:
        raise ValueError(f"gold answer {gold!r} is not a number; use kind='exact' or 'choice'")
    if pred is None:
        return False
    if kind == "numeric" and _to_float(pred) is None:
        return False  # a gold number is matched only by a number
    return same_answer(pred, gold, kind)


def infer_kind(answer: str) -> str:
    """The answer kind a gold answer implies: ``"choice"`` for one letter A-E, ``"numeric"`` when it
    parses as a number, else ``"exact"``."""
    if _CHOICE_GOLD.fullmatch(answer.strip()):
        return "choice"
    return "numeric" if _to_float(answer) is not None else "exact"


def score(text: str, record: Record) -> tuple[str | None, bool]:
    """Extract the answer from generated text and judge it against a record's gold answer.

    Parameters
    ----------
    text : str
        Generated output.
    record : Record
        ``record.meta["answer_kind"]`` picks the extractor (inferred from the gold answer when
        absent). Records from reasoning-gym (``meta["scorer"] == "reasoning_gym"``) are judged by the
        task's own ``score_answer``: the ``<answer>`` tag content when present, else the kind's
        extraction, is correct when the task scores it 1.0.

    Returns
    -------
    (str or None, bool)
        The extracted answer and whether it is correct.
    """
    kind = record.meta.get("answer_kind") or infer_kind(record.answer)
    if record.meta.get("scorer") == "reasoning_gym":
        from kdlens.data._gym import gym_score

        tagged = _last_tag(text) if isinstance(text, str) else None
        pred = tagged if tagged is not None else extract_answer(text, kind)
        return pred, pred is not None and gym_score(record, pred) >= 1.0
    pred = extract_answer(text, kind)
    return pred, answers_equal(pred, record.answer, kind)


# ------------------------------------------------------------------------------------------------
# lm-evaluation-harness's scoring of GSM8K-style answers, as named scoring modes next to kdlens's own


#: what the harness's regex filter returns when nothing matches (lm_eval/filters/extraction.py)
HARNESS_INVALID = "[invalid]"
# lm_eval/tasks/gsm8k/gsm8k.yaml and gsm8k-cot*.yaml (filter_list), copied verbatim
_HARNESS_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_HARNESS_STRICT_COT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
_HARNESS_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# the exact_match metric of those tasks: ignore_case true, ignore_punctuation false, these regexes_to_ignore
_HARNESS_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")


def _harness_regex(text: str, pattern: re.Pattern, group_select: int) -> str:
    """The harness's ``RegexFilter.apply`` on one response (lm_eval/filters/extraction.py)."""
    matches = pattern.findall(text if isinstance(text, str) else "")
    if not matches:
        return HARNESS_INVALID
    match = matches[group_select]
    if isinstance(match, tuple):  # several groups: the first non-empty one
        match = next((m for m in match if m), HARNESS_INVALID)
    return match.strip()


def harness_strict_match(text: str) -> str:
    """GSM8K's ``strict-match`` filter: the number after the first ``#### `` (``"[invalid]"`` if none).

    ``regex_pattern: "#### (\\-?[0-9\\.\\,]+)"``, ``group_select: 0``, then ``take_first``
    (lm_eval/tasks/gsm8k/gsm8k.yaml).
    """
    return _harness_regex(text, _HARNESS_STRICT, 0)


def harness_strict_match_cot(text: str) -> str:
    """The chain-of-thought tasks' ``strict-match``: the number in the first ``"The answer is N."``.

    ``regex_pattern: "The answer is (\\-?[0-9\\.\\,]+)."`` (lm_eval/tasks/gsm8k/gsm8k-cot.yaml,
    gsm8k-cot-zeroshot.yaml); ``"[invalid]"`` when absent.
    """
    return _harness_regex(text, _HARNESS_STRICT_COT, 0)


def harness_flexible_extract(text: str) -> str:
    """GSM8K's ``flexible-extract`` filter: the last number-like run in the text.

    ``regex_pattern: "(-?[$0-9.,]{2,})|(-?[0-9]+)"``, ``group_select: -1``: the last match, its first
    non-empty group, stripped; so ``"costs $1,000."`` gives ``"$1,000."`` (the exact-match metric
    then drops ``$``, ``,`` and the final period).
    """
    return _harness_regex(text, _HARNESS_FLEXIBLE, -1)


def harness_exact_match(pred: str | None, gold: str) -> bool:
    """The GSM8K tasks' ``exact_match``: equal strings after the tasks' ``regexes_to_ignore`` and lower-casing.

    Each of ``","``, ``"\\$"``, ``"(?s).*#### "``, ``"\\.$"`` is removed from both sides in that order,
    then both are lower-cased (``ignore_case: true``, ``ignore_punctuation: false``), as
    ``exact_match_hf_evaluate`` in lm_eval/api/metrics.py. A string comparison: ``"5.0"`` is not ``"5"``.
    ``None`` (and the harness's ``"[invalid]"``, unless the gold is literally that) is never correct.
    """
    if pred is None:
        return False
    for pattern in _HARNESS_IGNORE:
        pred, gold = re.sub(pattern, "", pred), re.sub(pattern, "", gold)
    return pred.lower() == gold.lower()


@dataclass(frozen=True)
class ScoringMode:
    """A way to turn generated text into an answer and judge it.

    Attributes
    ----------
    name : str
    extract : callable or None
        ``text -> answer string`` (the harness's filters); None for kdlens's own :func:`score`.
    description : str
    source : str
        Where the definition comes from.
    kinds : tuple of str
        Answer kinds it applies to (the harness modes are numeric, GSM8K-style).
    """

    name: str
    extract: Callable[[str], str] | None
    description: str
    source: str
    kinds: tuple[str, ...] = ANSWER_KINDS


#: name -> scoring mode; ``kdlens`` (the default) is :func:`score`
SCORING_MODES: dict[str, ScoringMode] = {
    "kdlens": ScoringMode("kdlens", None, "kdlens's extraction (markers, else the last number) and answer kinds",
                          "kdlens.data.score"),
    "strict-match": ScoringMode("strict-match", harness_strict_match,
                                "lm-evaluation-harness GSM8K: the number after '#### ', exact match",
                                "lm_eval/tasks/gsm8k/gsm8k.yaml", ("numeric",)),
    "strict-match-cot": ScoringMode("strict-match-cot", harness_strict_match_cot,
                                    "lm-evaluation-harness GSM8K-CoT: the number in 'The answer is N.', exact match",
                                    "lm_eval/tasks/gsm8k/gsm8k-cot.yaml", ("numeric",)),
    "flexible-extract": ScoringMode("flexible-extract", harness_flexible_extract,
                                    "lm-evaluation-harness GSM8K: the last number in the text, exact match",
                                    "lm_eval/tasks/gsm8k/gsm8k.yaml", ("numeric",)),
}


def score_as(text: str, record: Record, mode: str = "kdlens") -> tuple[str | None, bool]:
    """Extract and judge an answer under a named scoring mode of :data:`SCORING_MODES`.

    Parameters
    ----------
    text : str
        Generated output.
    record : Record
    mode : str
        ``"kdlens"`` (:func:`score`), or one of lm-evaluation-harness's GSM8K filters
        ``"strict-match"``, ``"strict-match-cot"``, ``"flexible-extract"`` (numeric answers only),
        judged with :func:`harness_exact_match` against ``record.answer``.

    Returns
    -------
    (str or None, bool)
        The extracted answer (None where the harness would give ``"[invalid]"``) and whether it is
        correct.
    """
    entry = SCORING_MODES.get(mode)
    if entry is None:
        raise ValueError(f"unknown scoring mode {mode!r}; known: {', '.join(SCORING_MODES)}")
    if entry.extract is None:
        return score(text, record)
    kind = record.meta.get("answer_kind") or infer_kind(record.answer)
    if kind not in entry.kinds:
        raise ValueError(f"scoring={mode!r} is lm-evaluation-harness's filter for {'/'.join(entry.kinds)} answers; "
                         f"task {record.task!r} has {kind} answers (e.g. {record.answer!r}): use scoring='kdlens'")
    pred = entry.extract(text if isinstance(text, str) else "")
    if pred == HARNESS_INVALID:
        return None, False
    return pred, harness_exact_match(pred, record.answer)
