"""The paper's probe tasks on a trained target: gendered pronouns and emoticon mouths.

A fixed, documented prompt set (never tuned to a model):
- Pronoun agreement. Ten female/male subject pairs the corpus supports ("woman"/"man", ...,
  "princess"/"prince"). "The <subject> <verb>" for five verbs that take a possessive ("lost",
  "shook", "raised", "turned", "took") must continue " her"/" his", and "The <subject> said that"
  must continue " she"/" he": 60 prompt pairs, 120 prompts. A prompt is right when
  P(correct) > P(wrong).
- Where agreement fails (diagnostic rows, no goal): the same 120 prompts after each of three fixed
  ungendered sentences (`PREFIXES`), and pronoun subjects ("She <verb>" / "He <verb>", "She said
  that" / "He said that") at a document start and after each sentence. A target that gets the
  pronoun subjects right but not the nouns has the agreement mechanism but not the nouns' gender;
  one that gets nouns right only after a sentence fails at the document start. The corpus's own
  support for each noun is the corpus stage's `pronoun_support.csv` (`vpd.data.pronoun_support`).
- The paper's prompts: P(" her" | "The princess lost") and P(" his" | "The prince lost"), with the
  rank of the answer among all tokens.
- Emoticon mouths. At every face in the held-out shard (an eye ':' ';' '=' followed by a mouth
  ')' '(' 'D' 'P' 'o', see `vpd.data.emoticons`), the probability the target gives to any mouth
  right after the eye, given up to `context` tokens before it; the same at a sample of the eye
  tokens' other uses, to show that the mouth is predicted from chat context, not from the colon.

Every prompt starts with the end-of-text token, as every training document does. A continuation
that is several tokens long is scored by the chain rule (its rank is that of its first token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from vpd.data.emoticons import EmoticonVocab, emoticon_vocab, find_eyes
from vpd.data.pronoun_support import FEMALE_MALE, POSSESSIVE_VERBS
EYES = (":", ";", "=")
MOUTHS = (")", "(", "D", "P", "o")
# The paper's prompts and its P(answer) on its target (fig:attribution-graph).
PAPER_PROMPTS = (
    ("princess", "The princess lost", " her", " his", 0.586),
    ("prince", "The prince lost", " his", " her", None),
)
# Ungendered sentences the diagnostic settings put before a prompt (fixed before any target was scored).
PREFIXES = ("It was late in the evening.", "Nothing more was said about it.", "The next day was fine and clear.")
MAIN_SETTING = "noun, document start"  # the setting of the goal; the others are diagnostic
# The goals of the default config for a competent target (issue: probes of the target stage).
GOALS = {"accuracy": 0.9, "p_her_princess": 0.2, "p_mouth": 0.5}


@dataclass(frozen=True)
class PronounPrompt:
    task: str  # "possessive" or "said_that"
    gender: str  # gender of the subject: "female" or "male"
    prompt: str
    correct: str
    wrong: str


def pronoun_prompts() -> list[PronounPrompt]:
    """The 120 agreement prompts (60 female/male pairs)."""
    out = []
    for female, male in FEMALE_MALE:
        for gender, noun, right, wrong in (("female", female, " her", " his"), ("male", male, " his", " her")):
            for verb in POSSESSIVE_VERBS:
                out.append(PronounPrompt("possessive", gender, f"The {noun} {verb}", right, wrong))
        for gender, noun, right, wrong in (("female", female, " she", " he"), ("male", male, " he", " she")):
            out.append(PronounPrompt("said_that", gender, f"The {noun} said that", right, wrong))
    return out


def pronoun_subject_prompts() -> list[PronounPrompt]:
    """The 12 pronoun-subject prompts: "She|He <verb>" -> " her"/" his", "She|He said that" -> " she"/" he"."""
    out = []
    for gender, subject, right, wrong in (("female", "She", " her", " his"), ("male", "He", " his", " her")):
        out += [PronounPrompt("possessive", gender, f"{subject} {verb}", right, wrong) for verb in POSSESSIVE_VERBS]
    for gender, subject, right, wrong in (("female", "She", " she", " he"), ("male", "He", " he", " she")):
        out.append(PronounPrompt("said_that", gender, f"{subject} said that", right, wrong))
    return out


def agreement_settings() -> dict[str, list[tuple[str, PronounPrompt]]]:
    """Setting name -> (prefix, prompt) pairs: the goal's setting first, then the diagnostic ones."""
    nouns, pronouns = pronoun_prompts(), pronoun_subject_prompts()
    return {
        MAIN_SETTING: [("", p) for p in nouns],
        "noun, after a sentence": [(pre, p) for pre in PREFIXES for p in nouns],
        "pronoun, document start": [("", p) for p in pronouns],
        "pronoun, after a sentence": [(pre, p) for pre in PREFIXES for p in pronouns],
    }


@torch.no_grad()
def _last_log_probs(model: nn.Module, ids: list[int]) -> torch.Tensor:
    """Next-token log-probabilities after `ids`, keeping the last `context` tokens if the model
    has a context limit (a tiny tokenizer may spell a prompt in more tokens than that)."""
    context = getattr(getattr(model, "cfg", None), "context", None)
    if context is not None:
        ids = ids[-context:]
    logits = model(torch.tensor([ids], dtype=torch.long))  # [1, T, V]
    return torch.log_softmax(logits[0, -1].float(), dim=-1)


def continuation_log_prob(model: nn.Module, prefix: list[int], continuation: list[int]) -> float:
    """log P(continuation | prefix) by the chain rule over its tokens."""
    total, ids = 0.0, list(prefix)
    for token in continuation:
        total += float(_last_log_probs(model, ids)[token])
        ids.append(token)
    return total


def rank_of(log_probs: torch.Tensor, token: int) -> int:
    """1 for the most probable token."""
    return int((log_probs > log_probs[token]).sum()) + 1


def score_prompt(model: nn.Module, tok, eot: int, prompt: str, correct: str, wrong: str) -> dict:
    prefix = [eot] + tok.encode(prompt).ids
    right_ids, wrong_ids = tok.encode(correct).ids, tok.encode(wrong).ids
    first = _last_log_probs(model, prefix)
    p_right = float(np.exp(continuation_log_prob(model, prefix, right_ids)))
    p_wrong = float(np.exp(continuation_log_prob(model, prefix, wrong_ids)))
    return {
        "prompt": prompt, "correct": correct, "wrong": wrong, "p_correct": p_right, "p_wrong": p_wrong,
        "rank_correct": rank_of(first, right_ids[0]), "rank_wrong": rank_of(first, wrong_ids[0]),
        "correct_tokens": len(right_ids), "right": p_right > p_wrong,
    }


def pronoun_table(model: nn.Module, tok, eot: int) -> pd.DataFrame:
    """Every agreement prompt of every setting, scored; `prompt` includes its prefix."""
    rows = []
    for setting, items in agreement_settings().items():
        for prefix, p in items:
            text = f"{prefix} {p.prompt}" if prefix else p.prompt
            rows.append({"setting": setting, "task": p.task, "gender": p.gender,
                         **score_prompt(model, tok, eot, text, p.correct, p.wrong)})
    return pd.DataFrame(rows)


def _windows_ending_at(tokens: np.ndarray, positions: np.ndarray, context: int) -> tuple[torch.Tensor, np.ndarray]:
    """Windows of `context` tokens holding each position (ending at it where the shard allows) and
    the position's index within its window."""
    T = min(context, len(tokens))
    starts = np.clip(positions - (T - 1), 0, len(tokens) - T)
    idx = starts[:, None] + np.arange(T)[None, :]
    return torch.from_numpy(np.asarray(tokens)[idx].astype(np.int64)), positions - starts


@torch.no_grad()
def mouth_probabilities(model: nn.Module, tokens: np.ndarray, positions: np.ndarray, ev: EmoticonVocab,
                        context: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(P(any mouth), P(the actual next token)) right after each eye position."""
    if len(positions) == 0:
        return np.empty(0), np.empty(0)
    windows, at = _windows_ending_at(tokens, positions, context)
    mouths = torch.tensor(ev.mouth_ids)
    p_mouth, p_next = [], []
    nxt = torch.from_numpy(np.asarray(tokens)[np.minimum(positions + 1, len(tokens) - 1)].astype(np.int64))
    for i in range(0, len(windows), batch_size):
        logits = model(windows[i:i + batch_size])
        rows = torch.arange(logits.shape[0])
        probs = torch.softmax(logits[rows, torch.from_numpy(at[i:i + batch_size])].float(), dim=-1)  # [b, V]
        p_mouth.append(probs[:, mouths].sum(-1))
        p_next.append(probs[rows, nxt[i:i + batch_size]])
    return torch.cat(p_mouth).numpy(), torch.cat(p_next).numpy()


def emoticon_probe(model: nn.Module, tok, tokens: np.ndarray, context: int, seed: int,
                   n_other: int = 1000) -> dict:
    """Mean P(mouth | eye) at the faces of `tokens`, and at a seeded sample of other eye uses."""
    ev = emoticon_vocab(tok, EYES, MOUTHS, tok.get_vocab_size())
    faces, other = find_eyes(tokens, ev)
    if len(other) > n_other:
        other = np.sort(np.random.default_rng(seed).choice(other, size=n_other, replace=False))
    p_mouth, p_next = mouth_probabilities(model, tokens, faces, ev, context)
    p_other, _ = mouth_probabilities(model, tokens, other, ev, context)
    nan = float("nan")
    return {
        "n_faces": int(len(faces)), "n_other": int(len(other)),
        "p_mouth": float(p_mouth.mean()) if len(faces) else nan,
        "p_actual_mouth": float(p_next.mean()) if len(faces) else nan,
        "p_mouth_other_uses": float(p_other.mean()) if len(other) else nan,
    }


def summary_table(pronouns: pd.DataFrame, paper: list[dict], emoticons: dict) -> pd.DataFrame:
    """One row per reported quantity: probe, quantity, value, n, goal, paper."""
    main = pronouns[pronouns["setting"] == MAIN_SETTING]
    rows = [
        ("pronoun agreement", "accuracy", main["right"].mean(), len(main), f">= {GOALS['accuracy']}", None),
        ("pronoun agreement", "mean P(correct)", main["p_correct"].mean(), len(main), None, None),
    ]
    for task, part in main.groupby("task", sort=False):
        rows.append((f"pronoun agreement: {task}", "accuracy", part["right"].mean(), len(part), None, None))
        rows.append((f"pronoun agreement: {task}", "mean P(correct)", part["p_correct"].mean(), len(part), None, None))
    for setting, part in pronouns[pronouns["setting"] != MAIN_SETTING].groupby("setting", sort=False):
        for task, sub in [("", part)] + list(part.groupby("task", sort=False)):
            probe = f"pronoun agreement (diagnostic), {setting}" + (f": {task}" if task else "")
            rows.append((probe, "accuracy", sub["right"].mean(), len(sub), None, None))
            if not task:
                rows.append((probe, "mean P(correct)", sub["p_correct"].mean(), len(sub), None, None))
    for p in paper:
        goal = f">= {GOALS['p_her_princess']} and > P({p['wrong'].strip()})" if p["name"] == "princess" else None
        rows.append((f"'{p['prompt']}'", f"P({p['correct'].strip()})", p["p_correct"], 1, goal, p["paper"]))
        rows.append((f"'{p['prompt']}'", f"P({p['wrong'].strip()})", p["p_wrong"], 1, None, None))
        rows.append((f"'{p['prompt']}'", f"rank of {p['correct'].strip()}", p["rank_correct"], 1, None, None))
    n = emoticons["n_faces"]
    rows += [
        ("emoticon mouth after eye (held-out)", "P(any mouth)", emoticons["p_mouth"], n, f">= {GOALS['p_mouth']}", None),
        ("emoticon mouth after eye (held-out)", "P(actual mouth)", emoticons["p_actual_mouth"], n, None, None),
        ("eye token in other uses (held-out)", "P(any mouth)", emoticons["p_mouth_other_uses"], emoticons["n_other"],
         None, None),
    ]
    return pd.DataFrame(rows, columns=["probe", "quantity", "value", "n", "goal", "paper"])


def summary_values(summary: pd.DataFrame, column: str = "value") -> dict[str, float]:
    """One column of a probe summary keyed "<probe> | <quantity>" (the benchmarks' JSON keys)."""
    return {f"{r.probe} | {r.quantity}": getattr(r, column) for r in summary.itertuples()}


def run_probes(model: nn.Module, tok, eot: int, val_tokens: np.ndarray, context: int, seed: int
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary table, per-prompt table) of every probe on `model` in eval mode."""
    was_training = model.training
    model.eval()
    try:
        pronouns = pronoun_table(model, tok, eot)
        paper = [{"name": name, "paper": p_paper, **score_prompt(model, tok, eot, prompt, right, wrong)}
                 for name, prompt, right, wrong, p_paper in PAPER_PROMPTS]
        emoticons = emoticon_probe(model, tok, val_tokens, context, seed)
    finally:
        model.train(was_training)
    paper_rows = pd.DataFrame(paper).drop(columns=["paper"]).assign(setting="paper", task="paper", gender="")
    prompts = pd.concat([pronouns, paper_rows], ignore_index=True)
    return summary_table(pronouns, paper, emoticons), prompts
