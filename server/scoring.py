"""Error rates for speech recognition: WER, CER, JER and MER, with one text normalizer.

Pure functions over strings; ``jiwer`` aligns the token sequences. Every rate is corpus-level:
the sum of errors (substitutions + deletions + insertions) over all pairs divided by the sum of
reference units, not a mean of per-utterance rates.

Units per metric (all after normalization):

- WER: whitespace-separated words.
- CER: characters, including the single space between words (jiwer's convention).
- JER (jamo error rate): Hangul syllables are split into their jamo letters (한 -> ㅎ ㅏ ㄴ; a
  compound vowel such as ㅘ or a complex final such as ㄳ is one letter, as in Unicode's own
  decomposition); every other non-space character (Latin letters, digits...) is one unit too.
  Spaces are not units: Korean word spacing varies between transcribers and is not a jamo error.
- MER (mixed error rate, Korean-English code-switching): each Hangul character (syllable) is one
  unit and each maximal run of other characters (a Latin word, a number) is one unit, so
  "AI모델을" -> ["ai", "모", "델", "을"].

Empty references: a pair whose reference is empty contributes its hypothesis units as insertions.
If the whole reference side has no units, a rate would divide by zero; it is defined as 0.0 when
the hypothesis side is empty too and 1.0 otherwise (``score_all`` still reports the counts).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import jiwer
from jiwer.transforms import AbstractTransform

from .errors import InvalidInput

__all__ = [
    "DEFAULT_NORMALIZER",
    "Normalizer",
    "cer",
    "jamo_tokens",
    "jer",
    "mer",
    "mixed_tokens",
    "score_all",
    "wer",
]

Texts = str | Sequence[str]

# --- Hangul tables -------------------------------------------------------------------------------
# Hangul reaches us in three spellings: precomposed syllables (U+AC00-U+D7A3), conjoining jamo
# (U+1100-U+11FF, what NFD produces; initial and final consonants are different code points) and
# compatibility jamo (U+3131-U+318E, what keyboards type alone; one code point per letter, with no
# initial/final distinction). Mapping compatibility jamo to conjoining ones would require guessing
# each consonant's position, so the canonical letter form here is the position-free compatibility
# letter; syllables are rebuilt from letters when the normalizer asks for syllables.
_SYLLABLE_FIRST, _SYLLABLE_LAST = 0xAC00, 0xD7A3
_N_VOWELS, _N_TAILS = 21, 28
_FILLERS = {"\u115f", "\u1160", "\u3164", "\uffa0"}  # invisible placeholders: dropped
_POSITIONAL_PREFIXES = (
    "HANGUL CHOSEONG ",
    "HANGUL JUNGSEONG ",
    "HANGUL JONGSEONG ",
    "HALFWIDTH HANGUL LETTER ",
)


def _letter_table() -> dict[str, str]:
    """Conjoining and half-width jamo -> compatibility letter, matched by Unicode name."""
    table = dict.fromkeys(_FILLERS, "")
    ranges = [(0x1100, 0x1200), (0xA960, 0xA980), (0xD7B0, 0xD800), (0xFFA1, 0xFFDD)]
    for first, end in ranges:
        for code in range(first, end):
            name = unicodedata.name(chr(code), "")
            for prefix in _POSITIONAL_PREFIXES:
                if name.startswith(prefix):
                    try:
                        table[chr(code)] = unicodedata.lookup("HANGUL LETTER " + name[len(prefix) :])
                    except KeyError:  # archaic clusters with no compatibility letter stay as they are
                        pass
    return table


_TO_LETTER = _letter_table()
_LEADS = {_TO_LETTER[chr(0x1100 + i)]: i for i in range(19)}
_VOWELS = {_TO_LETTER[chr(0x1161 + i)]: i for i in range(_N_VOWELS)}
_TAILS = {_TO_LETTER[chr(0x11A7 + i)]: i for i in range(1, _N_TAILS)}


# Every Hangul block: conjoining jamo, compatibility jamo, extended jamo A, syllables (+ extended
# jamo B), half-width letters.
_HANGUL_RANGES = "\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7ff\uffa0-\uffdf"
_HANGUL_RUN = re.compile(f"([{_HANGUL_RANGES}]+)")
_HANGUL_CHAR = re.compile(f"[{_HANGUL_RANGES}]")


def _is_syllable(char: str) -> bool:
    return _SYLLABLE_FIRST <= ord(char) <= _SYLLABLE_LAST


def _to_letters(text: str) -> str:
    """Every syllable, conjoining or half-width jamo -> compatibility letters (한 -> ㅎㅏㄴ)."""
    out = []
    for char in text:
        if _is_syllable(char):
            out.extend(_TO_LETTER[part] for part in unicodedata.normalize("NFD", char))
        else:
            out.append(_TO_LETTER.get(char, char))
    return "".join(out)


def _to_syllables(run: str) -> str:
    """Conjoining jamo (position-marked) compose by NFC; letters that are left compose below.

    Precomposed syllables are kept as they are, so a stray letter never joins one: "좋아ㅋㅋ" stays.
    """
    return _compose("".join(_TO_LETTER.get(char, char) for char in unicodedata.normalize("NFC", run)))


def _canonical_hangul(text: str, mode: str, unicode_form: str | None) -> str:
    parts = _HANGUL_RUN.split(text)  # odd indices are runs of Hangul
    for i, part in enumerate(parts):
        if i % 2:
            parts[i] = _to_letters(part) if mode == "jamo" else _to_syllables(part)
        elif unicode_form is not None:
            # The Unicode form only sees the other text: NFKC would turn compatibility letters into
            # conjoining ones and recombine them. What it makes Hangul out of (㉠ -> ᄀ) is mapped.
            part = unicodedata.normalize(unicode_form, part)
            parts[i] = _to_letters(part) if mode == "jamo" else _to_syllables(part)
    return "".join(parts)


def _compose(letters: str) -> str:
    """Rebuild syllables from letters: lead + vowel (+ a final not followed by a vowel)."""
    out, i, n = [], 0, len(letters)
    while i < n:
        if letters[i] in _LEADS and i + 1 < n and letters[i + 1] in _VOWELS:
            lead, vowel, tail = _LEADS[letters[i]], _VOWELS[letters[i + 1]], 0
            i += 2
            # A consonant before a vowel starts the next syllable (하나, not 한아).
            if i < n and letters[i] in _TAILS and not (i + 1 < n and letters[i + 1] in _VOWELS):
                tail = _TAILS[letters[i]]
                i += 1
            out.append(chr(_SYLLABLE_FIRST + (lead * _N_VOWELS + vowel) * _N_TAILS + tail))
        else:
            out.append(letters[i])
            i += 1
    return "".join(out)


# --- Normalizer ----------------------------------------------------------------------------------
_APOSTROPHES = {"'", "\u2019", "\u02bc"}  # ' ’ ʼ


@dataclass(frozen=True)
class Normalizer:
    """Text normalization applied to references and hypotheses alike before scoring.

    Steps, in order: Unicode form and Hangul canonical form (with ``hangul`` set, the Unicode form
    applies to the text around Hangul only); case folding; punctuation; whitespace.
    """

    lowercase: bool = True
    """Case-fold (``str.casefold``: also "Straße" == "strasse")."""
    remove_punctuation: bool = True
    """Turn Unicode punctuation (categories P*) into spaces, so "ill-disposed" -> "ill disposed".
    An apostrophe between two letters or digits stays, as ASCII "'" ("don't", "don’t" -> "don't").
    Symbols (categories S*: $, +, €) are kept; "%" is punctuation (Po) in Unicode."""
    unicode_form: Literal["NFC", "NFKC"] | None = "NFKC"
    """NFKC also folds full-width letters (ＡＢＣ -> ABC) and other compatibility variants."""
    hangul: Literal["none", "syllable", "jamo"] = "syllable"
    """"syllable": precomposed syllables wherever jamo spell one, so composed (한), conjoining
    (ᄒ ᅡ ᆫ) and compatibility (ㅎㅏㄴ) spellings compare equal; "jamo": compatibility letters
    (한 -> ㅎㅏㄴ); "none": only what ``unicode_form`` does (NFKC maps ㅎㅏㄴ to 하ᄂ, not 한)."""

    def __post_init__(self) -> None:
        if self.unicode_form not in ("NFC", "NFKC", None):
            raise InvalidInput(f"unicode_form must be 'NFC', 'NFKC' or None, got {self.unicode_form!r}")
        if self.hangul not in ("none", "syllable", "jamo"):
            raise InvalidInput(f"hangul must be 'none', 'syllable' or 'jamo', got {self.hangul!r}")

    def __call__(self, text: str) -> str:
        if self.hangul != "none":
            text = _canonical_hangul(text, self.hangul, self.unicode_form)
        elif self.unicode_form is not None:
            text = unicodedata.normalize(self.unicode_form, text)
        if self.lowercase:
            text = text.casefold()
        if self.remove_punctuation:
            text = _strip_punctuation(text)
        return " ".join(text.split())


def _strip_punctuation(text: str) -> str:
    out = []
    for i, char in enumerate(text):
        if not unicodedata.category(char).startswith("P"):
            out.append(char)
        elif (
            char in _APOSTROPHES and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
        ):
            out.append("'")
        else:
            out.append(" ")
    return "".join(out)


DEFAULT_NORMALIZER = Normalizer()


# --- Tokenizers ----------------------------------------------------------------------------------
def jamo_tokens(text: str, normalizer: Normalizer = DEFAULT_NORMALIZER) -> list[str]:
    """JER units: jamo letters and other non-space characters (``normalizer.hangul`` is ignored)."""
    return [char for char in dataclasses.replace(normalizer, hangul="jamo")(text) if not char.isspace()]


def mixed_tokens(text: str, normalizer: Normalizer = DEFAULT_NORMALIZER) -> list[str]:
    """MER units: one per Hangul character, one per run of other characters (syllables forced)."""
    tokens: list[str] = []
    for word in dataclasses.replace(normalizer, hangul="syllable")(text).split():
        run: list[str] = []
        for char in word:
            if _HANGUL_CHAR.match(char):
                if run:
                    tokens.append("".join(run))
                    run = []
                tokens.append(char)
            else:
                run.append(char)
        if run:
            tokens.append("".join(run))
    return tokens


class _Tokenize(AbstractTransform):
    """Hands our own token lists to jiwer, which expects a list of token lists per input."""

    def __init__(self, tokenize: Callable[[str], list[str]]) -> None:
        self.tokenize = tokenize

    def process_string(self, s: str) -> list[list[str]]:
        return [self.tokenize(s)]

    def process_list(self, inp: list[str]) -> list[list[str]]:
        return [self.tokenize(s) for s in inp]


# --- Rates ---------------------------------------------------------------------------------------
class _Counts(NamedTuple):
    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def rate(self) -> float:
        reference_units = self.hits + self.substitutions + self.deletions
        if reference_units == 0:  # see the module docstring
            return 0.0 if self.insertions == 0 else 1.0
        return (self.substitutions + self.deletions + self.insertions) / reference_units


def _pairs(refs: Texts, hyps: Texts) -> tuple[list[str], list[str]]:
    if isinstance(refs, str) != isinstance(hyps, str):
        raise InvalidInput("pass references and hypotheses both as strings or both as lists")
    refs_list = [refs] if isinstance(refs, str) else list(refs)
    hyps_list = [hyps] if isinstance(hyps, str) else list(hyps)
    if len(refs_list) != len(hyps_list):
        raise InvalidInput(f"got {len(refs_list)} references but {len(hyps_list)} hypotheses")
    if not refs_list:
        raise InvalidInput("nothing to score: no reference/hypothesis pairs")
    if not all(isinstance(text, str) for text in refs_list + hyps_list):
        raise InvalidInput("references and hypotheses must be strings")
    return refs_list, hyps_list


def _count(refs: Texts, hyps: Texts, tokenize: Callable[[str], list[str]]) -> _Counts:
    refs_list, hyps_list = _pairs(refs, hyps)
    transform = _Tokenize(tokenize)
    out = jiwer.process_words(refs_list, hyps_list, transform, transform)
    return _Counts(out.hits, out.substitutions, out.deletions, out.insertions)


def _words(normalizer: Normalizer) -> Callable[[str], list[str]]:
    return lambda text: normalizer(text).split()


def _chars(normalizer: Normalizer) -> Callable[[str], list[str]]:
    return lambda text: list(normalizer(text))


def wer(refs: Texts, hyps: Texts, normalizer: Normalizer = DEFAULT_NORMALIZER) -> float:
    """Word error rate, corpus-level ("the cat sat" vs "the cat sit" -> 1/3)."""
    return _count(refs, hyps, _words(normalizer)).rate


def cer(refs: Texts, hyps: Texts, normalizer: Normalizer = DEFAULT_NORMALIZER) -> float:
    """Character error rate, corpus-level; the space between words counts as a character."""
    return _count(refs, hyps, _chars(normalizer)).rate


def jer(refs: Texts, hyps: Texts, normalizer: Normalizer = DEFAULT_NORMALIZER) -> float:
    """Jamo error rate over :func:`jamo_tokens` (Hangul letters; other characters one each)."""
    return _count(refs, hyps, lambda text: jamo_tokens(text, normalizer)).rate


def mer(refs: Texts, hyps: Texts, normalizer: Normalizer = DEFAULT_NORMALIZER) -> float:
    """Mixed error rate over :func:`mixed_tokens` (Hangul per syllable, other words whole)."""
    return _count(refs, hyps, lambda text: mixed_tokens(text, normalizer)).rate


def score_all(
    refs: Texts, hyps: Texts, normalizer: Normalizer = DEFAULT_NORMALIZER
) -> dict[str, float | int]:
    """Every rate plus the WER edit counts, for reports (JSON-ready: plain floats and ints)."""
    words = _count(refs, hyps, _words(normalizer))
    return {
        "wer": words.rate,
        "cer": cer(refs, hyps, normalizer),
        "jer": jer(refs, hyps, normalizer),
        "mer": mer(refs, hyps, normalizer),
        "hits": words.hits,
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "reference_words": words.hits + words.substitutions + words.deletions,
        "utterances": 1 if isinstance(refs, str) else len(refs),
    }
