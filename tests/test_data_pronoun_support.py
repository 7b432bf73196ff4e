"""The corpus's support for the pronoun probes, counted by hand on small texts."""

import math

from vpd.data.pronoun_support import FEMALE_MALE, count_support, probe_words, support_table


def test_probe_words_cover_every_pair_and_the_reference_pronouns():
    words = probe_words()
    assert len(words) == 2 * len(FEMALE_MALE) + 2
    assert words["princess"] == "female" and words["prince"] == "male" and words["she"] == "female"


def test_counts_by_hand():
    texts = [
        # mother: next pronoun "her" (female); "The mother took her" is the prompt's shape.
        "The mother took her shawl. Later the king said that he would go.",
        # mother's: "mother" then "s"; the next pronoun is "him" (male), 2 words after "s".
        "Her mother's friend saw him. The princess, when she woke, lost her crown.",
        # no pronoun within the window after "lady"; the window does not cross into the next document.
        "The lady " + "walked " * 12 + "with her.",
        "his wife",  # no pronoun after "wife"; the "his" before it does not count
    ]
    c = count_support(texts, window=12)
    assert c["mother"]["occurrences"] == 2 and c["mother"]["next_female"] == 1 and c["mother"]["next_male"] == 1
    assert c["mother"]["then_her"] == 1 and c["mother"]["then_his"] == 0
    assert c["king"]["said_that_he"] == 1 and c["king"]["next_male"] == 1
    # "princess" -> "she" 2 words later; "The princess, when she" is not the prompt's shape.
    assert c["princess"]["next_female"] == 1 and c["princess"]["then_her"] == 0
    assert c["lady"]["occurrences"] == 1 and c["lady"]["next_female"] + c["lady"]["next_male"] == 0
    assert c["wife"]["occurrences"] == 1 and sum(c["wife"][k] for k in ("next_female", "next_male")) == 0
    # "she" in the second text is followed by "her" ("she woke, lost her").
    assert c["she"]["occurrences"] == 1 and c["she"]["next_female"] == 1
    # "he" (first text) has no pronoun after it within the document.
    assert c["he"]["occurrences"] == 1 and c["he"]["next_male"] == 0


def test_window_limits_the_search():
    text = "the girl " + "x " * 3 + "her"
    assert count_support([text], window=3)["girl"]["next_female"] == 0
    assert count_support([text], window=4)["girl"]["next_female"] == 1


def test_table_shares_and_totals():
    texts = ["the woman lost her way", "the woman said that he was right", "the man took his hat", "the boy"]
    t = support_table(texts).set_index("word")
    assert t.loc["woman", "own_share"] == 0.5  # one her, one he
    assert t.loc["man", "own_share"] == 1.0 and t.loc["man", "then_his"] == 1
    assert math.isnan(t.loc["boy", "own_share"])  # no pronoun follows
    assert t.loc["woman", "said_that_he"] == 1 and t.loc["woman", "then_her"] == 1
    female, male = t.loc["all female nouns"], t.loc["all male nouns"]
    assert (female["occurrences"], female["next_female"], female["next_male"]) == (2, 1, 1)
    assert (male["occurrences"], male["next_male"], male["own_share"]) == (2, 1, 1.0)
    assert list(t.index[-2:]) == ["all female nouns", "all male nouns"]
