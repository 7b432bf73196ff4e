"""How much the corpus itself teaches the gendered-pronoun probes of the target stage.

The probe vocabulary lives here, below the target layer, so the corpus stage can count it and the
target's probes (`vpd.target.probes`) can ask it. For every probe noun (and the pronouns "she" /
"he" as a reference) the training split is scanned once, word by word (lower-cased runs of
letters, so "mother's" is "mother" then "s"), and three kinds of evidence are counted:

- `next_female` / `next_male`: after each occurrence, the first third-person singular gendered
  pronoun among the next `PRONOUN_WINDOW` words (she/her/hers/herself against
  he/him/his/himself), if any. `own_share` is the share of those that match the noun's gender:
  the best a model could learn about the noun's gender from co-occurrence alone.
- `then_her` / `then_his`: the prompt's own shape, "<noun> <any word> her|his".
- `said_that_she` / `said_that_he`: "<noun> said that she|he".

Rows summing each gender's nouns close the table.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import pandas as pd

# Female/male subject pairs of the agreement probes, the verbs that take a possessive after them.
FEMALE_MALE = (
    ("woman", "man"), ("girl", "boy"), ("mother", "father"), ("sister", "brother"), ("daughter", "son"),
    ("wife", "husband"), ("aunt", "uncle"), ("queen", "king"), ("lady", "gentleman"), ("princess", "prince"),
)
POSSESSIVE_VERBS = ("lost", "shook", "raised", "turned", "took")
REFERENCE_PRONOUNS = (("she", "female"), ("he", "male"))
FEMALE_PRONOUNS = frozenset({"she", "her", "hers", "herself"})
MALE_PRONOUNS = frozenset({"he", "him", "his", "himself"})
# Words after a noun in which its next pronoun is looked for: about a clause, so "The lady took
# her" and "the lady, when she" count, while a pronoun of the next sentence mostly does not.
PRONOUN_WINDOW = 12
COLUMNS = ["word", "gender", "occurrences", "next_female", "next_male", "own_share", "then_her", "then_his",
           "said_that_she", "said_that_he"]
_WORD_RE = re.compile(r"[a-z]+")


def probe_words() -> dict[str, str]:
    """Every probe noun and reference pronoun -> its gender, in table order."""
    out = {f: "female" for f, _ in FEMALE_MALE}
    out.update({m: "male" for _, m in FEMALE_MALE})
    out.update(dict(REFERENCE_PRONOUNS))
    return out


def words_of(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def _pronoun_gender(word: str) -> str | None:
    if word in FEMALE_PRONOUNS:
        return "female"
    if word in MALE_PRONOUNS:
        return "male"
    return None


def count_support(texts: Iterable[str], window: int = PRONOUN_WINDOW) -> dict[str, Counter]:
    """Per probe word, the counts named in the module docstring, over `texts` (documents: no
    window crosses a document boundary)."""
    genders = probe_words()
    counts = {w: Counter() for w in genders}
    for text in texts:
        words = words_of(text)
        for i, w in enumerate(words):
            if w not in counts:
                continue
            c = counts[w]
            c["occurrences"] += 1
            for later in words[i + 1:i + 1 + window]:
                g = _pronoun_gender(later)
                if g is not None:
                    c[f"next_{g}"] += 1
                    break
            if i + 2 < len(words) and words[i + 2] in ("her", "his"):
                c[f"then_{words[i + 2]}"] += 1
            if words[i + 1:i + 3] == ["said", "that"] and i + 3 < len(words) and words[i + 3] in ("she", "he"):
                c[f"said_that_{words[i + 3]}"] += 1
    return counts


def _row(word: str, gender: str, c: Counter) -> dict:
    own = c["next_female"] if gender == "female" else c["next_male"]
    total = c["next_female"] + c["next_male"]
    return {"word": word, "gender": gender, "occurrences": c["occurrences"], "next_female": c["next_female"],
            "next_male": c["next_male"], "own_share": own / total if total else float("nan"),
            "then_her": c["then_her"], "then_his": c["then_his"], "said_that_she": c["said_that_she"],
            "said_that_he": c["said_that_he"]}


def support_table(texts: Iterable[str], window: int = PRONOUN_WINDOW) -> pd.DataFrame:
    """One row per probe noun and reference pronoun, then "all female nouns" / "all male nouns"."""
    counts = count_support(texts, window)
    genders = probe_words()
    rows = [_row(w, genders[w], counts[w]) for w in genders]
    pronouns = {p for p, _ in REFERENCE_PRONOUNS}
    for gender in ("female", "male"):
        total = sum((counts[w] for w, g in genders.items() if g == gender and w not in pronouns), Counter())
        rows.append(_row(f"all {gender} nouns", gender, total))
    return pd.DataFrame(rows, columns=COLUMNS)
