"""Training lists from domain text alone: each sentence competes with ASR-like corruptions of itself.

Users often have far more text of their domain (notes, glossaries, messages) than transcribed audio.
For each sentence this builds an N-best-like list: the sentence, then up to k − 1 variants with one or
two of the errors a general-purpose recogniser makes on domain vocabulary:

- a word replaced by an orthographically or phonetically close common word ("heparin" → "hepatic"),
- a rare word split into common pieces ("troponin" → "trope nin"),
- a short function word dropped.

Common words are the whole-word entries of the encoder's own vocabulary. The lists carry no ASR
scores (all zero), so training teaches the rescorer alone to prefer the domain sentence.
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from ..errors import InvalidInput
from .data import NBestList, make_list, rescorer_text

FUNCTION_WORDS = frozenset(["a", "an", "the", "of", "to", "in", "on", "at", "for", "and", "or", "is", "was", "be", "it", "its", "that", "this", "with", "by"])
MAX_SENTENCES = 100_000
_WORD = re.compile(r"^[a-z]{2,}$")


def read_sentences(path: Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (``#`` starts a comment line)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read text file {str(path)!r}: {exc}") from exc
    sentences = [rescorer_text(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise InvalidInput(f"text file {str(path)!r} has no sentences (one per line)")
    if len(sentences) > MAX_SENTENCES:
        raise InvalidInput(f"text file has {len(sentences)} sentences; at most {MAX_SENTENCES}")
    return sentences


def sound_key(word: str) -> str:
    """A crude phonetic key: first letter, then consonant classes without repeats (Soundex-like)."""
    classes = {**dict.fromkeys("bfpv", "1"), **dict.fromkeys("cgjkqsxz", "2"), **dict.fromkeys("dt", "3"),
               "l": "4", **dict.fromkeys("mn", "5"), "r": "6"}
    out, last = [word[0]], classes.get(word[0], "")
    for ch in word[1:]:
        code = classes.get(ch, "")
        if code and code != last:
            out.append(code)
        last = code
    return "".join(out)[:5]


class Confuser:
    """Finds common words a recogniser could write instead of a given word."""

    def __init__(self, vocabulary: Iterable[str], seed: int = 0) -> None:
        self.words = sorted({w for w in vocabulary if _WORD.match(w)})
        self.common = set(self.words)
        self.by_letter: dict[str, list[str]] = {}
        self.by_key: dict[str, list[str]] = {}
        for w in self.words:
            self.by_letter.setdefault(w[0], []).append(w)
            self.by_key.setdefault(sound_key(w), []).append(w)
        self.random = random.Random(seed)

    @lru_cache(maxsize=65536)  # noqa: B019  (one Confuser per training run)
    def neighbours(self, word: str) -> tuple[str, ...]:
        """Close common words, most similar first (never ``word`` itself)."""
        pool = set(self.by_letter.get(word[0], ())) if word else set()
        close = difflib.get_close_matches(word, pool, n=4, cutoff=0.6)
        alike = sorted(self.by_key.get(sound_key(word), ()) if word else (),
                       key=lambda w: -difflib.SequenceMatcher(None, word, w).ratio())[:2]
        return tuple(dict.fromkeys(w for w in close + alike if w != word))

    def split(self, word: str) -> str | None:
        """``word`` as two common words when it is not one itself (e.g. a rare term)."""
        if word in self.common or len(word) < 6:
            return None
        for i in range(3, len(word) - 2):
            head, tail = word[:i], word[i:]
            if head in self.common and tail in self.common:
                return f"{head} {tail}"
        return None

    def corruptions(self, words: Sequence[str]) -> list[list[str]]:
        """Single-edit variants of ``words``, rarer words first."""
        variants: list[list[str]] = []
        order = sorted(range(len(words)), key=lambda i: (words[i] in self.common, -len(words[i])))
        for i in order:
            w = words[i]
            if w in FUNCTION_WORDS:
                continue
            pieces = self.split(w)
            if pieces:
                variants.append([*words[:i], *pieces.split(), *words[i + 1:]])
            for n in self.neighbours(w)[:2]:
                variants.append([*words[:i], n, *words[i + 1:]])
        for i, w in enumerate(words):
            if w in FUNCTION_WORDS and len(words) > 3:
                variants.append([*words[:i], *words[i + 1:]])
        return variants

    def hypotheses(self, sentence: str, k: int) -> list[str]:
        """The sentence and up to k − 1 distinct corrupted versions (some with two edits)."""
        words = sentence.split()
        singles = self.corruptions(words)
        chosen = singles[: max(0, k - 2)]
        edited = [(v, {i for i, (x, w) in enumerate(zip(v, words)) if x != w})
                  for v in singles if len(v) == len(words)]
        pair = next(((a, b) for a, ea in edited for b, eb in edited if not ea & eb), None)
        if pair:  # one double error: edits of two different words combined
            a, b = pair
            chosen.append([y if x == w else x for x, y, w in zip(a, b, words)])
        out = list(dict.fromkeys([sentence] + [" ".join(v) for v in chosen]))
        return out[:k]


def synthesize_lists(sentences: Sequence[str], vocabulary: Iterable[str], k: int = 4, seed: int = 0) -> list[NBestList]:
    """One list per sentence: the sentence and its corruptions in random order, with zero ASR scores.

    The order is shuffled because equal scores keep the first hypothesis: with the sentence always
    first, fusion weights tuned on these lists would learn nothing (λ = 0 would already be perfect).
    """
    confuser = Confuser(vocabulary, seed)
    order = random.Random(seed)
    lists = []
    for sentence in sentences:
        hyps = confuser.hypotheses(sentence, k)
        order.shuffle(hyps)
        lists.append(make_list(sentence, hyps, [0.0] * len(hyps), [0] * len(hyps)))
    return lists
