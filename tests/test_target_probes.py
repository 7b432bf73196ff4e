"""Target probes on hand-built models whose next-token distributions are known in closed form:
zero logits everywhere except logit `a` on the k boosted tokens, so a boosted token has probability
e^a / (k e^a + V - k) and an unboosted one 1 / (k e^a + V - k)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from vpd.config import TokenizerConfig
from vpd.data.tokenizer import train_tokenizer
from vpd.target.probes import (
    FEMALE_MALE, MAIN_SETTING, MOUTHS, POSSESSIVE_VERBS, PREFIXES, continuation_log_prob, emoticon_probe,
    pronoun_prompts, pronoun_subject_prompts, run_probes, summary_values,
)

EOT = "<|endoftext|>"
A = 3.0


@pytest.fixture(scope="module")
def tok():
    words = [w for pair in FEMALE_MALE for w in pair]
    lines = [f"The {w} {v} her hat and his coat ; she said that he was here :) ;P =D :o :(" for w in words
             for v in POSSESSIVE_VERBS + ("said",)]
    lines += [f"{pre} She {v} her hat. He {v} his coat." for pre in PREFIXES for v in POSSESSIVE_VERBS]
    lines += [f"{subject} said that" for subject in ("She", "He")]
    return train_tokenizer(lines * 3, TokenizerConfig(vocab_size=410, min_frequency=2, end_of_text=EOT))


class RuleLM(nn.Module):
    """Logit `a` on `boost` ids at every position whose prefix holds a `trigger` id (`last_only`: at
    positions whose own token is a trigger); rules apply in order, later ones overwrite."""

    def __init__(self, vocab_size: int, rules: list[tuple[set[int], list[int], bool]], a: float = A):
        super().__init__()
        self.V, self.rules, self.a = vocab_size, rules, a
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        logits = torch.zeros(B, T, self.V)
        for b in range(B):
            for t in range(T):
                for trigger, boost, last_only in self.rules:
                    seen = {int(idx[b, t])} if last_only else set(idx[b, :t + 1].tolist())
                    if seen & trigger:
                        logits[b, t, boost] = self.a
        return logits + 0 * self.dummy


def ids(tok, words: list[str]) -> list[int]:
    out = []
    for w in words:
        enc = tok.encode(w).ids
        assert len(enc) == 1, f"{w!r} is not one token: {tok.encode(w).tokens}"
        out.append(enc[0])
    return out


def gender_model(tok, favour_male_always: bool = False) -> RuleLM:
    V = tok.get_vocab_size()
    her, his, she, he = ids(tok, [" her", " his", " she", " he"])
    female = {tok.encode(f" {f}").ids[-1] for f, _ in FEMALE_MALE}
    male = {tok.encode(f" {m}").ids[-1] for _, m in FEMALE_MALE}
    if favour_male_always:
        return RuleLM(V, [(female | male, [his, he], False)])
    return RuleLM(V, [(female, [her, she], False), (male, [his, he], False)])


def pronoun_model(tok) -> RuleLM:
    """Knows the gender of the subject pronouns "She"/"He" (at a document start or after a sentence)
    and of no noun."""
    her, his, she, he = ids(tok, [" her", " his", " she", " he"])
    female, male = set(ids(tok, ["She", " She"])), set(ids(tok, ["He", " He"]))
    return RuleLM(tok.get_vocab_size(), [(female, [her, she], False), (male, [his, he], False)])


def test_prompt_set_is_fixed_and_balanced():
    prompts = pronoun_prompts()
    assert len(prompts) == 120  # 10 pairs x (5 verbs + "said that") x 2 genders
    assert sum(p.task == "said_that" for p in prompts) == 20
    assert {(p.prompt, p.correct) for p in prompts} >= {("The princess lost", " her"), ("The prince lost", " his"),
                                                          ("The queen said that", " she")}


def test_agreement_on_a_model_that_knows_gender(tok):
    V = tok.get_vocab_size()
    summary, prompts = run_probes(gender_model(tok), tok, tok.token_to_id(EOT), np.zeros(8, np.uint16), 16, seed=0)
    z = 2 * math.exp(A) + V - 2  # two tokens boosted at once (" her" and " she", or " his" and " he")
    p_boost, p_other = math.exp(A) / z, 1 / z
    agreement = prompts[prompts.setting == MAIN_SETTING]
    assert len(agreement) == 120 and agreement["right"].all()
    np.testing.assert_allclose(agreement["p_correct"], p_boost, rtol=1e-5)
    np.testing.assert_allclose(agreement["p_wrong"], p_other, rtol=1e-5)
    assert (agreement["rank_correct"] == 1).all() and (agreement["rank_wrong"] == 3).all()  # ties: she/her boosted
    row = summary.set_index(["probe", "quantity"])
    assert row.loc[("pronoun agreement", "accuracy"), "value"] == 1.0
    assert row.loc[("'The princess lost'", "P(her)"), "value"] == pytest.approx(p_boost, rel=1e-5)
    assert row.loc[("'The princess lost'", "P(her)"), "paper"] == 0.586


def test_agreement_on_a_model_that_always_says_his(tok):
    summary, prompts = run_probes(gender_model(tok, favour_male_always=True), tok, tok.token_to_id(EOT),
                                  np.zeros(8, np.uint16), 16, seed=0)
    agreement = prompts[prompts.setting == MAIN_SETTING]
    assert list(agreement["right"]) == [p.gender == "male" for p in pronoun_prompts()]
    row = summary.set_index(["probe", "quantity"])
    assert row.loc[("pronoun agreement", "accuracy"), "value"] == 0.5


def test_multi_token_continuation_uses_the_chain_rule(tok):
    V = tok.get_vocab_size()
    first, second = tok.encode(" hat").ids[0], tok.encode(" coat").ids[0]
    model = RuleLM(V, [({first}, [second], True)])  # after " hat", " coat" is boosted
    lp = continuation_log_prob(model, [tok.token_to_id(EOT)], [first, second])
    assert lp == pytest.approx(math.log(1 / V) + math.log(math.exp(A) / (math.exp(A) + V - 1)), rel=1e-6)


def test_emoticon_probe_counts_faces_and_other_uses(tok):
    V = tok.get_vocab_size()
    colon, paren, word = tok.encode(" :").ids[0], tok.token_to_id(")"), tok.encode(" hat").ids[0]
    mouth_ids = [i for m in MOUTHS if (i := tok.token_to_id(m)) is not None]
    assert paren in mouth_ids and len(mouth_ids) >= 3
    # faces at 1 and 6 (eye, mouth, then a word boundary); the colon at 4 is followed by a word.
    shard = np.array([word, colon, paren, word, colon, word, colon, paren, word, word], dtype=np.uint16)
    model = RuleLM(V, [({colon}, [paren], True)])
    got = emoticon_probe(model, tok, shard, context=4, seed=0)
    z = math.exp(A) + V - 1
    assert got["n_faces"] == 2 and got["n_other"] == 1
    assert got["p_mouth"] == pytest.approx((math.exp(A) + len(mouth_ids) - 1) / z, rel=1e-5)
    assert got["p_actual_mouth"] == pytest.approx(math.exp(A) / z, rel=1e-5)
    assert got["p_mouth_other_uses"] == pytest.approx(got["p_mouth"], rel=1e-6)  # the rule ignores context


def test_prompts_longer_than_the_context_keep_their_last_tokens(tok):
    seen = []

    class ShortContext(RuleLM):
        cfg = type("Cfg", (), {"context": 2})()

        def forward(self, idx):
            seen.append(idx.tolist())
            return super().forward(idx)

    V = tok.get_vocab_size()
    model = ShortContext(V, [])
    lp = continuation_log_prob(model, [1, 2, 3, 4], [5])
    assert seen == [[[3, 4]]] and lp == pytest.approx(math.log(1 / V))


def _diagnostic(summary, setting: str) -> tuple[float, int]:
    row = summary.set_index(["probe", "quantity"]).loc[(f"pronoun agreement (diagnostic), {setting}", "accuracy")]
    return row["value"], row["n"]


def test_diagnostic_settings_tell_nouns_from_pronouns(tok):
    """A model that knows only the nouns' gender is right on every noun prompt, before or after a
    sentence, and on no pronoun prompt (a tie is not right); a model that knows only "She"/"He"
    is the mirror image."""
    assert len(pronoun_subject_prompts()) == 12
    eot = tok.token_to_id(EOT)
    nouns, _ = run_probes(gender_model(tok), tok, eot, np.zeros(8, np.uint16), 16, seed=0)
    pronouns, prompts = run_probes(pronoun_model(tok), tok, eot, np.zeros(8, np.uint16), 16, seed=0)
    assert _diagnostic(nouns, "noun, after a sentence") == (1.0, 360)
    assert _diagnostic(nouns, "pronoun, document start") == (0.0, 12)
    assert _diagnostic(nouns, "pronoun, after a sentence") == (0.0, 36)
    assert _diagnostic(pronouns, "noun, after a sentence") == (0.0, 360)
    assert _diagnostic(pronouns, "pronoun, document start") == (1.0, 12)
    assert _diagnostic(pronouns, "pronoun, after a sentence") == (1.0, 36)
    main = pronouns.set_index(["probe", "quantity"]).loc[("pronoun agreement", "accuracy")]
    assert main["value"] == 0.0 and main["n"] == 120  # the goal's row counts the document-start nouns only
    after = prompts[prompts.setting == "pronoun, after a sentence"]
    assert set(after["prompt"].str.split(" She| He").str[0]) == set(PREFIXES)


def test_summary_values_key_each_row_by_probe_and_quantity():
    summary = pd.DataFrame({"probe": ["pronoun agreement", "'The princess lost'"], "quantity": ["accuracy", "P(her)"],
                            "value": [0.75, 0.0125], "n": [120, 1]})
    assert summary_values(summary) == {"pronoun agreement | accuracy": 0.75, "'The princess lost' | P(her)": 0.0125}
    assert summary_values(summary, "n") == {"pronoun agreement | accuracy": 120, "'The princess lost' | P(her)": 1}
