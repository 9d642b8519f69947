"""Mastodon's length of a post, checked on the cases Mastodon's own spec
(spec/validators/status_length_validator_spec.rb) pins down, and a few more."""

from __future__ import annotations

import pytest

from core.social.mastodon_text import MastodonMeasure, countable_text, mastodon_length

LINK = "http://" + "b" * 30 + ".com/example"


def test_a_link_after_a_space_counts_23() -> None:
    assert mastodon_length("a" * 476 + " " + LINK) == 500


def test_a_link_glued_to_a_word_is_not_a_link_and_counts_whole() -> None:
    assert mastodon_length("a" * 476 + LINK) == 476 + len(LINK)


def test_a_link_over_4096_characters_counts_whole() -> None:
    text = "http://example.com/valid?" + "#foo?" * 1000
    assert mastodon_length(text) == len(text)


def test_a_remote_mention_counts_only_its_user() -> None:
    assert mastodon_length("a" * 475 + " @alice@" + "b" * 30 + ".com") == 475 + 1 + len("@alice")
    assert countable_text("hi @alice@example.social and @bob") == "hi @alice and @bob"


def test_a_mention_with_an_overlong_domain_counts_whole() -> None:
    text = "@alice@" + "b" * 500 + ".com"
    assert mastodon_length(text) == len(text)


@pytest.mark.parametrize(
    "cluster",
    [
        "✨",
        "\U0001f3f3\ufe0f\u200d\u26a7\ufe0f",  # transgender flag: a ZWJ sequence
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family
        "\U0001f1eb\U0001f1f7",  # a flag: two regional indicators
        "e\u0301",  # e and a combining accent
    ],
)
def test_a_grapheme_cluster_counts_one(cluster: str) -> None:
    assert mastodon_length(cluster * 500) == 500


def test_the_content_warning_counts_too() -> None:
    assert mastodon_length("b" * 251, spoiler_text="a" * 250) == 501


def test_blank_text_counts_nothing() -> None:
    assert mastodon_length(" \n\t ") == 0


@pytest.mark.parametrize(
    ("text", "counted"),
    [
        ("see https://joinmastodon.org/apps.", "see " + "x" * 23 + "."),  # the dot ends the sentence
        ("(https://en.wikipedia.org/wiki/Foo_(bar))", "(" + "x" * 23 + ")"),  # balanced parentheses
        ("https://example.com/x?q=1&b=2, then", "x" * 23 + ", then"),
        ("gemini://gemini.circumlunar.space/docs/", "x" * 23),  # Mastodon's extra protocols
        ("example.com/no-protocol", "example.com/no-protocol"),  # a protocol is required
        ("http://localhost:3000/x", "http://localhost:3000/x"),  # no top-level domain
        ("write to me@example.com", "write to me@example.com"),  # an address is no mention
        ("https://mastodon.social/@alice@remote.example", "x" * 23),  # a mention inside a link
        ("https://social.example/x", "https://social.example/x"),  # .example is no top-level domain
        ("@Alice@Example.COM!", "@Alice!"),
    ],
)
def test_links_and_mentions_are_found_as_mastodon_finds_them(text: str, counted: str) -> None:
    assert countable_text(text) == counted


def test_the_measure_uses_the_instance_link_length() -> None:
    text = "read https://example.com/a/very/long/path/indeed"
    assert MastodonMeasure()(text) == len("read ") + 23
    assert MastodonMeasure(url_length=30)(text) == len("read ") + 30
