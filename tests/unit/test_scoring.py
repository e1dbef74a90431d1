"""WER/CER/JER/MER against hand-computed cases, and the normalizer they share."""

from __future__ import annotations

import unicodedata

import pytest

from splitasr.errors import InvalidInput
from splitasr.scoring import (
    Normalizer,
    cer,
    jamo_tokens,
    jer,
    mer,
    mixed_tokens,
    score_all,
    wer,
)

RAW = Normalizer(lowercase=False, remove_punctuation=False, unicode_form=None, hangul="none")

# 한국어 in its three spellings: precomposed syllables, conjoining jamo (NFD), compatibility jamo.
COMPOSED = "한국어"
CONJOINING = unicodedata.normalize("NFD", COMPOSED)
COMPATIBILITY = "ㅎㅏㄴㄱㅜㄱㅇㅓ"


# --- WER / CER ------------------------------------------------------------------------------------
def test_wer_one_substitution_in_four_words() -> None:
    assert wer("the cat sat down", "the cat sit down") == 0.25


def test_wer_counts_deletions_and_insertions() -> None:
    # ref 4 words; "cat" deleted, "very" and "much" inserted: 3 / 4.
    assert wer("the cat sat down", "the sat down very much") == pytest.approx(0.75)


def test_wer_can_exceed_one() -> None:
    assert wer("hi", "oh hi there you") == 3.0


def test_cer_one_substitution_in_four_characters() -> None:
    assert cer("abcd", "abed") == 0.25


def test_cer_counts_the_space_between_words() -> None:
    # "ab cd" = 5 characters; the hypothesis lost the space: 1 deletion.
    assert cer("ab cd", "abcd") == pytest.approx(1 / 5)
    assert cer("ab cd", "ab   cd") == 0.0  # repeated whitespace is collapsed first


def test_corpus_level_is_pooled_not_averaged() -> None:
    refs = ["a b c d", "e f"]
    hyps = ["a x c d", "e f g"]
    # (1 substitution + 1 insertion) / 6 reference words, not the mean of 1/4 and 1/2.
    assert wer(refs, hyps) == pytest.approx(2 / 6)
    # Characters: 7 + 3 in the references; "b"->"x", then " g" inserted: 3 / 10.
    assert cer(refs, hyps) == pytest.approx(3 / 10)


def test_score_all_reports_rates_and_counts() -> None:
    scores = score_all(["the cat sat down", "hello world"], ["the bat sat", "hello big world"])
    assert scores["substitutions"] == 1
    assert scores["deletions"] == 1
    assert scores["insertions"] == 1
    assert scores["hits"] == 4
    assert scores["reference_words"] == 6
    assert scores["utterances"] == 2
    assert scores["wer"] == pytest.approx(3 / 6)
    assert set(scores) >= {"wer", "cer", "jer", "mer"}


# --- Empty references and bad arguments ----------------------------------------------------------
def test_empty_reference_handling() -> None:
    assert wer("", "") == 0.0
    assert wer("", "hello there") == 1.0  # no reference units: any output is wrong
    assert cer("  ", "x") == 1.0
    # Inside a corpus an empty reference just contributes insertions: 1 / 2.
    assert wer(["", "a b"], ["x", "a b"]) == pytest.approx(0.5)
    # Punctuation-only references normalize to empty as well.
    assert wer("?!", "") == 0.0


@pytest.mark.parametrize(
    ("refs", "hyps", "cause"),
    [
        (["a", "b"], ["a"], "2 references but 1 hypotheses"),
        ("a", ["a"], "both as strings or both as lists"),
        ([], [], "nothing to score"),
        (["a", 3], ["a", "b"], "must be strings"),
    ],
)
def test_bad_arguments(refs: object, hyps: object, cause: str) -> None:
    with pytest.raises(InvalidInput, match=cause):
        wer(refs, hyps)  # type: ignore[arg-type]


def test_normalizer_rejects_unknown_options() -> None:
    with pytest.raises(InvalidInput, match="hangul"):
        Normalizer(hangul="conjoining")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="unicode_form"):
        Normalizer(unicode_form="NFD")  # type: ignore[arg-type]


# --- Normalization -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("Don't stop", "don't stop"),
        ("don\u2019t", "don't"),  # typographic apostrophe
        ("'quoted' words", "quoted words"),  # quotes at word edges go
        ("ill-disposed", "ill disposed"),
        ("well\u2014known", "well known"),  # em dash
        ("\uff21\uff22\uff23 \uff11\uff12\uff13", "abc 123"),  # full-width, folded by NFKC
        ("Straße", "strasse"),  # casefold, not lower
        ("$5 + 3€", "$5 + 3€"),  # symbols (S*) are not punctuation; note that % is (Po)
        ("  many\t spaces \n", "many spaces"),
    ],
)
def test_normalizer(text: str, expected: str) -> None:
    assert Normalizer()(text) == expected


def test_raw_normalizer_only_collapses_whitespace() -> None:
    assert RAW(" Hello,  World! ") == "Hello, World!"
    assert wer("Hello world", "hello world", RAW) == 0.5
    assert wer("Hello world", "hello world") == 0.0


@pytest.mark.parametrize("unicode_form", ["NFKC", "NFC", None])
def test_hangul_spellings_compare_equal(unicode_form: str | None) -> None:
    syllables = Normalizer(unicode_form=unicode_form)  # type: ignore[arg-type]
    letters = Normalizer(unicode_form=unicode_form, hangul="jamo")  # type: ignore[arg-type]
    assert {syllables(text) for text in (COMPOSED, CONJOINING, COMPATIBILITY)} == {COMPOSED}
    assert {letters(text) for text in (COMPOSED, CONJOINING, COMPATIBILITY)} == {COMPATIBILITY}
    for metric in (wer, cer, jer, mer):
        assert metric(COMPOSED, CONJOINING) == metric(COMPOSED, COMPATIBILITY) == 0.0


def test_syllables_rebuilt_from_letters_follow_hangul_rules() -> None:
    normalize = Normalizer()
    assert normalize("ㅎㅏㄴㅏ") == "하나"  # a consonant before a vowel starts the next syllable
    assert normalize("ㄱㅏㅄ") == "값"  # a complex final
    assert normalize("ㅋㅋㅋ ㅠㅠ") == "ㅋㅋㅋ ㅠㅠ"  # letters that spell no syllable stay
    assert normalize("\uffbe\uffc2") == "하"  # half-width letters
    assert normalize("좋아ㅋㅋ") == "좋아ㅋㅋ"  # a stray letter never joins a written syllable


def test_without_hangul_handling_spellings_differ() -> None:
    plain = Normalizer(unicode_form=None, hangul="none")
    assert plain(COMPOSED) != plain(COMPATIBILITY)
    # NFKC alone is not enough: it maps ㄴ to an initial consonant, so ㅎㅏㄴ becomes 하ᄂ.
    assert Normalizer(hangul="none")("ㅎㅏㄴ") == "하\u1102"
    assert wer(COMPOSED, COMPATIBILITY, plain) == 1.0


# --- JER -----------------------------------------------------------------------------------------
def test_jamo_tokens() -> None:
    assert jamo_tokens("한국") == ["ㅎ", "ㅏ", "ㄴ", "ㄱ", "ㅜ", "ㄱ"]
    assert jamo_tokens("과 값") == ["ㄱ", "ㅘ", "ㄱ", "ㅏ", "ㅄ"]  # compound vowel, complex final: one each
    assert jamo_tokens("AI 모델") == ["a", "i", "ㅁ", "ㅗ", "ㄷ", "ㅔ", "ㄹ"]


def test_jer_one_vowel_wrong() -> None:
    # 한국 -> 한극: ㅜ -> ㅡ, 1 of 6 jamo (CER would call it 1 of 2 syllables).
    assert jer("한국", "한극") == pytest.approx(1 / 6)
    assert cer("한국", "한극") == pytest.approx(1 / 2)


def test_jer_with_latin_letters_and_spacing() -> None:
    # ref units: a i ㅁ ㅗ ㄷ ㅔ ㄹ (7); ㅔ -> ㅐ is one substitution; spacing is not a unit.
    assert jer("AI 모델", "AI모댈") == pytest.approx(1 / 7)


# --- MER -----------------------------------------------------------------------------------------
def test_mixed_tokens() -> None:
    assert mixed_tokens("나는 AI모델을 train했다.") == [
        "나",
        "는",
        "ai",
        "모",
        "델",
        "을",
        "train",
        "했",
        "다",
    ]
    assert mixed_tokens("GPT-4를") == ["gpt", "4", "를"]


def test_mer_code_switched_example() -> None:
    ref = "나는 AI 모델을 train 했다"  # 나 는 ai 모 델 을 train 했 다: 9 units
    hyp = "나는 AI 모델 training 했다"  # 나 는 ai 모 델 training 했 다: 8 units
    # Best alignment: 을 -> training (substitution) and train deleted: 2 edits / 9.
    assert mer(ref, hyp) == pytest.approx(2 / 9)
    # WER sees 5 words with 2 substitutions (모델을 -> 모델, train -> training): 2 / 5.
    assert wer(ref, hyp) == pytest.approx(2 / 5)


def test_mer_ignores_spacing_between_hangul_and_latin() -> None:
    assert mer("AI모델을", "AI 모델을") == 0.0
    assert wer("AI모델을", "AI 모델을") > 0.0


def test_mer_corpus_level() -> None:
    refs = ["오늘 meeting 있어", "deadline 은 내일"]  # 오 늘 meeting 있 어 (5) + deadline 은 내 일 (4)
    hyps = ["오늘 meeting 있어", "deadlines 내일"]  # second: deadline -> deadlines, 은 deleted
    assert mer(refs, hyps) == pytest.approx(2 / 9)
