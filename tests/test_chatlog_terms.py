"""Index terms (issue 13): word forms meet, noise stays out, any text is safe."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.chatlog.terms import MAX_TERMS, Terms

TERMS = Terms()


def test_word_forms_meet() -> None:
    assert TERMS.query("launches") == TERMS.query("launched") == TERMS.query("Launching") == ["launch"]
    assert TERMS.query("When is the RELEASE?") == TERMS.query("releases") == ["releas"]


def test_function_words_long_ids_and_long_runs_are_left_out() -> None:
    assert TERMS.query("the and of to") == []
    assert TERMS.query("v2 2026 12345678901 " + "x" * 41) == ["v2", "2026"]


def test_unicode_is_folded_and_other_scripts_are_kept() -> None:
    assert TERMS.query("ＣＡＦÉ café") == ["café"]
    assert TERMS.query("東京 🚀 мир") == ["東京", "мир"]


def test_a_flood_of_words_is_capped() -> None:
    text = " ".join(f"word{i}" for i in range(MAX_TERMS * 3))
    assert len(TERMS.counts(text)) == MAX_TERMS


def test_an_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="no Snowball stemmer for 'klingon'"):
        Terms("klingon")


@given(st.text())
def test_any_text_gives_terms_without_failing(text: str) -> None:
    counts = TERMS.counts(text)
    assert all(term and count > 0 for term, count in counts.items())
