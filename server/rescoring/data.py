"""N-best lists for rescorer training and evaluation: decode once, score every hypothesis, cache as JSON.

A list holds the backbone's k best distinct hypotheses of one utterance
(:func:`splitasr.decoding.nbest`), their ASR log-probabilities and token counts, and each one's
word errors against the reference after Whisper's English normalizer. The cache is a JSON file keyed
by what produced it (backbone, adapter, k, beam and the manifest's rows), so a rerun with the same
inputs does not decode again and a changed input decodes afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..datasets.manifest import Utterance
from ..fileio import atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass
class NBestList:
    ref: str
    hyps: list[str]
    asr: list[float]  # sum of token log-probabilities
    lengths: list[int]  # ASR tokens + end of text
    errors: list[int]  # word errors against ``ref`` (normalised)
    ref_words: int

    @property
    def oracle(self) -> int:
        return min(self.errors)


_english = None


def normalize(text: str) -> str:
    """Whisper's English normalizer (numbers, spellings, punctuation): what WER is computed on."""
    global _english
    if _english is None:
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        _english = EnglishTextNormalizer({})
    return _english(text)


_PUNCTUATION = re.compile(r"[^\w\s']")


def rescorer_text(text: str) -> str:
    """What the rescorer reads: lower case, no punctuation, single spaces (ASR output and domain text alike)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCTUATION.sub(" ", text).split())


def word_errors(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word lists (substitutions + deletions + insertions)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def make_list(ref: str, hyps: Sequence[str], asr: Sequence[float], lengths: Sequence[int]) -> NBestList:
    ref_words = normalize(ref).split()
    errors = [word_errors(ref_words, normalize(h).split()) for h in hyps]
    return NBestList(ref, list(hyps), [float(a) for a in asr], [int(n) for n in lengths], errors, len(ref_words))


def decode_lists(backbone, utterances: Sequence[Utterance], k: int, *, slot: int = 0, batch_size: int = 4,
                 quiet: bool = False) -> list[NBestList]:
    """Decode the k-best list of every utterance (adapter ``slot``; 0 = the backbone alone)."""
    from ..audio import decode_audio
    from ..decoding import DecodingOptions, nbest

    options = DecodingOptions(beam_size=k, nbest=k)
    lists: list[NBestList] = []
    bar = tqdm(total=len(utterances), desc=f"{k}-best", unit="utt", disable=quiet)
    for start in range(0, len(utterances), batch_size):
        batch = utterances[start : start + batch_size]
        audios = [decode_audio(u.audio_path) for u in batch]
        slots = [slot] * len(batch) if slot else None
        for u, hyps in zip(batch, nbest(backbone, audios, options, slots=slots)):
            lists.append(make_list(u.text, [h.text for h in hyps], [h.logprob for h in hyps],
                                   [len(h.tokens) + 1 for h in hyps]))
        bar.update(len(batch))
    bar.close()
    return lists


def cache_key(backbone_name: str, adapter_sha256: str | None, k: int, utterances: Sequence[Utterance]) -> str:
    rows = [[str(u.audio_path), u.audio_path.stat().st_size, u.text] for u in utterances]
    body = json.dumps({"v": CACHE_VERSION, "backbone": backbone_name, "adapter": adapter_sha256, "k": k,
                       "rows": rows}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def cached_lists(path: Path, key: str, produce) -> tuple[list[NBestList], bool]:
    """The lists cached in ``path`` under ``key``, or ``produce()`` written there; (lists, was cached)."""
    if path.is_file():
        try:
            body = json.loads(path.read_text())
            if body.get("key") == key:
                return [NBestList(**row) for row in body["lists"]], True
            log.info("N-best cache %s was made from other inputs; decoding again", path)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable N-best cache %s: %s", path, exc)
    lists = produce()
    atomic_write_bytes(path, json.dumps({"key": key, "lists": [asdict(x) for x in lists]}).encode())
    return lists, False
