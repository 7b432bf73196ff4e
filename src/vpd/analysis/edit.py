"""The `edit` stage: find the subcomponents that fire on emoticon eyes, edit one, compare with LoRA.

1. Emoticon eyes (`vpd.data.emoticons`): an eye token followed by a mouth token that ends the
   word; every other occurrence of an eye token is an "other use". Emoticons are rare in the CPU-scale
   corpus, so the finding step uses the eyes of BOTH shards; the evaluation uses held-out windows
   only: the val shard's, plus, when val has fewer than `min_eval_windows`, the eyes of a seeded
   random subset of train documents (split by document, so no document is on both sides; at most
   half of the train eyes move). The split is written to edit.json and to every results row.
2. Ranking. For every decomposed subcomponent: precision and recall of firing (CI > threshold) at
   the eye position, emoticon eyes vs other uses (a seeded sample of `n_negatives` other uses; the
   false positives are scaled by total / sampled other uses, so precision is at the corpus' ratio).
   The best subcomponent (F1) of a matrix that writes to the residual stream is edited.
3. Edit. U_c is replaced by s * alpha * u_o / ||u_o|| (u_o = unembedding row of 'o'), applied as the
   rank-1 weight delta  W' = W + (U_c' - U_c)^T V_c^T  to the target's matrix (no training). The
   sign s is chosen numerically: the one with the higher P('o') at the firing positions of the
   training-split windows at `reference_alpha`.
4. Baseline: a rank-1 LoRA on the same matrix (vpd.analysis.lora) trained on the training-split
   windows, n = `lora_n_small` and n = all, for each lambda.
5. Metrics on the held-out windows (firing = CI of the edited subcomponent under the unedited
   target > threshold, within ±`context` tokens of the eye): P('o') at firing positions, KL(target
   || edited) at the non-firing positions within ±context (surrounding), and KL over ordinary val
   windows (global). P('o') at the eye positions themselves is reported too.

Writes  <out>/{emoticon_subcomponents.csv, edit_results.csv, heatmap_tokens.csv, edit.json,
        final_config.yaml, fig_model-editing-pareto.{png,pdf}, fig_model-editing-heatmap.{png,pdf}}
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from vpd.analysis.config import EditConfig
from vpd.utils.divergence import kl_per_token

log = logging.getLogger("vpd")

# The paper's numbers (fig:model-editing-pareto), placed beside ours in edit_results.csv.
PAPER = {
    ("edit", 3.0): {"paper_p_o": 0.881, "paper_kl_surrounding": 0.018, "paper_kl_global": 0.0027},
    ("lora", 10.0): {"paper_p_o": 0.964, "paper_kl_surrounding": 0.0077, "paper_kl_global": 0.0023},
}
PAPER_NOTE = {
    ("edit", 3.0): "paper: edit of 2.mlp.down_proj:2359, alpha 3",
    ("lora", 10.0): "paper: rank-1 LoRA, n = 947 windows, lambda 10",
}


# ---------------------------------------------------------------- emoticon windows
def document_ids(tokens: np.ndarray, positions: np.ndarray, eot_id: int) -> np.ndarray:
    """Index of the document (documents are separated by `eot_id`) holding each position."""
    eots = np.flatnonzero(np.asarray(tokens) == eot_id)
    return np.searchsorted(eots, positions, side="right")


def window_starts(positions: np.ndarray, n_tokens: int, T: int, after: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, eye index) of T-token windows with `after` tokens after each eye where the shard allows."""
    starts = np.clip(positions - (T - 1 - after), 0, n_tokens - T)
    return starts, positions - starts


def gather_windows(tokens: np.ndarray, starts: np.ndarray, T: int) -> torch.Tensor:
    idx = starts[:, None] + np.arange(T)[None, :]
    return torch.from_numpy(np.asarray(tokens)[idx].astype(np.int64))  # [n, T]


@dataclass
class EyeWindows:
    """Windows [n, T] around eye tokens, the eye's index in each, and where they came from."""

    windows: torch.Tensor
    eye: np.ndarray
    shard: np.ndarray  # 'train' / 'val'
    position: np.ndarray
    document: np.ndarray

    def __len__(self) -> int:
        return len(self.eye)

    def subset(self, mask: np.ndarray) -> "EyeWindows":
        m = np.asarray(mask)  # bool mask or integer indices
        return EyeWindows(self.windows[torch.from_numpy(m)], self.eye[m], self.shard[m], self.position[m],
                          self.document[m])

    @staticmethod
    def build(tokens: np.ndarray, positions: np.ndarray, shard: str, T: int, after: int, eot_id: int) -> "EyeWindows":
        starts, eye = window_starts(positions, len(tokens), T, after)
        return EyeWindows(gather_windows(tokens, starts, T), eye, np.full(len(positions), shard, dtype=object),
                          positions, document_ids(tokens, positions, eot_id))

    @staticmethod
    def concat(parts: Sequence["EyeWindows"]) -> "EyeWindows":
        return EyeWindows(torch.cat([p.windows for p in parts]), np.concatenate([p.eye for p in parts]),
                          np.concatenate([p.shard for p in parts]), np.concatenate([p.position for p in parts]),
                          np.concatenate([p.document for p in parts]))


def split_eval(train_docs: np.ndarray, n_val: int, min_eval: int, seed: int) -> tuple[np.ndarray, str]:
    """Which train eyes move to the eval split (mask over train_docs) and a sentence saying how.

    All val eyes are eval. When there are fewer than `min_eval`, whole train documents (seeded
    order) move to eval until it has `min_eval` eyes, moving at most half of the train eyes.
    """
    move = np.zeros(len(train_docs), dtype=bool)
    if n_val >= min_eval or len(train_docs) == 0:
        return move, f"held-out: the {n_val} emoticon windows of val.bin"
    rng = np.random.default_rng(seed)
    docs = np.unique(train_docs)
    rng.shuffle(docs)
    cap = len(train_docs) // 2
    moved_docs = 0
    for d in docs:
        m = train_docs == d
        if n_val + move.sum() >= min_eval or move.sum() + m.sum() > cap:
            break
        move |= m
        moved_docs += 1
    note = (f"held-out: the {n_val} emoticon windows of val.bin + {int(move.sum())} windows from {moved_docs} "
            f"train.bin documents held out by document (seed {seed}; val has fewer than edit.min_eval_windows="
            f"{min_eval})")
    return move, note


# ---------------------------------------------------------------- ranking
@torch.no_grad()
def eye_ci_and_act(dec, windows: torch.Tensor, eye: np.ndarray, batch_size: int) -> tuple[dict, dict]:
    """{matrix: CI [n, C]} and {matrix: activation x.V [n, C]} at each window's eye position."""
    cis, acts = {n: [] for n in dec.names}, {n: [] for n in dec.names}
    Vs = {n: dec.components(n)[0].float() for n in dec.names}
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size]
        rows = torch.arange(len(w))
        e = torch.from_numpy(eye[i:i + batch_size])
        _, xs = dec.matrix_inputs(w)
        ci, _ = dec.ci_from_inputs(xs)
        for n in dec.names:
            cis[n].append(ci[n][rows, e].float().cpu())
            acts[n].append((xs[n][rows, e].float() @ Vs[n]).cpu())
    return ({n: torch.cat(v) for n, v in cis.items()}, {n: torch.cat(v) for n, v in acts.items()})


def rank_subcomponents(
    dec, pos: EyeWindows, neg: EyeWindows, neg_total: int, cfg: EditConfig, d_model: int, batch_size: int
) -> pd.DataFrame:
    """Precision/recall/F1 of firing on emoticon eyes vs other uses, every subcomponent; best first."""
    ci_p, act_p = eye_ci_and_act(dec, pos.windows, pos.eye, batch_size)
    ci_n, _ = eye_ci_and_act(dec, neg.windows, neg.eye, batch_size) if len(neg) else ({}, {})
    w_neg = neg_total / max(1, len(neg))
    rows = []
    for n in dec.names:
        fire_p = (ci_p[n] > cfg.fire_threshold)
        fire_n = (ci_n[n] > cfg.fire_threshold) if n in ci_n else torch.zeros(0, dec.C[n], dtype=torch.bool)
        tp = fire_p.sum(0).double()
        fp = fire_n.sum(0).double() * w_neg
        precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1e-12), torch.zeros_like(tp))
        recall = tp / max(1, len(pos))
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                         torch.zeros_like(tp))
        d_out = dec.shapes[n][0]
        editable = d_out == d_model and any(fnmatch.fnmatchcase(n, p) for p in cfg.matrices)
        rows.append(pd.DataFrame({
            "matrix": n, "c": np.arange(dec.C[n]), "name": [dec.subcomponent_name(n, c) for c in range(dec.C[n])],
            "editable": editable, "n_eyes": len(pos), "n_other_sampled": len(neg), "n_other_total": neg_total,
            "fires_on_eyes": fire_p.sum(0).numpy(), "fires_on_other_sampled": fire_n.sum(0).numpy(),
            "precision": precision.numpy(), "recall": recall.numpy(), "f1": f1.numpy(),
            "mean_ci_eyes": ci_p[n].mean(0).numpy(),
            "mean_ci_other": ci_n[n].mean(0).numpy() if n in ci_n and len(neg) else np.nan,
            "mean_act_eyes": act_p[n].mean(0).numpy(),
        }))
    df = pd.concat(rows, ignore_index=True)
    df = df[df["fires_on_eyes"] > 0].sort_values(["f1", "recall", "precision"], ascending=False, kind="stable")
    df.insert(0, "rank", np.arange(len(df)))
    return df.reset_index(drop=True)


# ---------------------------------------------------------------- the edit
def edit_direction(unembedding: torch.Tensor, target_id: int, alpha: float, sign: float) -> torch.Tensor:
    """sign * alpha * u_o / ||u_o||  [d_model]."""
    u = unembedding[target_id].detach().float()
    return sign * alpha * u / u.norm()


def edit_delta(V_c: torch.Tensor, U_c: torch.Tensor, new_U_c: torch.Tensor) -> torch.Tensor:
    """Weight delta that replaces component c's output direction: (U_c' - U_c)^T V_c^T = outer  [d_out, d_in]."""
    return torch.outer(new_U_c.float() - U_c.float(), V_c.float())


def with_weight_delta(model: nn.Module, matrix: str, delta: torch.Tensor) -> nn.Module:
    """A copy of `model` with W' = W + delta on the nn.Linear `matrix` (every other weight identical)."""
    edited = copy.deepcopy(model)
    lin = dict(edited.named_modules()).get(matrix)
    if not isinstance(lin, nn.Linear):
        raise ValueError(f"{matrix!r} is not an nn.Linear of the model")
    if tuple(delta.shape) != tuple(lin.weight.shape):
        raise ValueError(f"delta shape {tuple(delta.shape)} differs from {matrix}.weight {tuple(lin.weight.shape)}")
    with torch.no_grad():
        lin.weight.add_(delta.to(lin.weight.dtype).to(lin.weight.device))
    return edited


def subcomponent_edit(dec, matrix: str, c: int, unembedding: torch.Tensor, target_id: int, alpha: float,
                      sign: float) -> torch.Tensor:
    V, U = dec.components(matrix)
    return edit_delta(V[:, c], U[c], edit_direction(unembedding, target_id, alpha, sign))


# ---------------------------------------------------------------- metrics
@torch.no_grad()
def logits_of(model: nn.Module, windows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """fp32 logits [n, T, V] (no autocast: KLs of small edits need fp32)."""
    dev = next(model.parameters()).device
    return torch.cat([model(windows[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(windows), batch_size)])


@dataclass
class EvalSet:
    windows: torch.Tensor  # [n, T] held-out emoticon windows
    fire: torch.Tensor  # [n, T] bool: firing positions within ±context of the eye
    surround: torch.Tensor  # [n, T] bool: non-firing positions within ±context of the eye
    eye: torch.Tensor  # [n, T] bool: the eye positions
    base: torch.Tensor  # [n, T, V] target logits
    global_windows: torch.Tensor  # [m, T]
    global_base: torch.Tensor  # [m, T, V]


def region_masks(ci: torch.Tensor, eye: np.ndarray, context: int, threshold: float):
    """(fire, surround, eye) masks [n, T] from the edited subcomponent's CI [n, T]."""
    n, T = ci.shape
    dist = (torch.arange(T)[None, :] - torch.from_numpy(np.asarray(eye))[:, None]).abs()
    region = dist <= context
    fire = (ci > threshold) & region
    return fire, region & ~fire, dist == 0


@torch.no_grad()
def per_token(model: nn.Module, ev: EvalSet, target_id: int, batch_size: int) -> dict[str, torch.Tensor]:
    logits = logits_of(model, ev.windows, batch_size)
    return {"p_o": F.softmax(logits, -1)[..., target_id], "kl": kl_per_token(ev.base, logits)}


@torch.no_grad()
def edit_metrics(model: nn.Module, ev: EvalSet, target_id: int, batch_size: int) -> dict[str, float]:
    tok = per_token(model, ev, target_id, batch_size)
    kl_global = kl_per_token(ev.global_base, logits_of(model, ev.global_windows, batch_size))

    def mean(x, m):
        return float(x[m].mean()) if m.any() else float("nan")

    return {
        "p_o": mean(tok["p_o"], ev.fire), "p_o_eyes": mean(tok["p_o"], ev.eye),
        "kl_surrounding": mean(tok["kl"], ev.surround), "kl_global": float(kl_global.mean()),
    }


def mean_p_o(model: nn.Module, windows: torch.Tensor, mask: torch.Tensor, target_id: int, batch_size: int) -> float:
    p = F.softmax(logits_of(model, windows, batch_size), -1)[..., target_id]
    return float(p[mask].mean())


def choose_sign(target: nn.Module, dec, matrix: str, c: int, windows: torch.Tensor, mask: torch.Tensor, target_id: int,
                alpha: float, batch_size: int) -> tuple[float, dict[float, float]]:
    """The sign s of s * alpha * u_o/||u_o|| whose edit gives the higher mean P(target) at `mask`
    positions of `windows`, and the mean P(target) of both signs."""
    unemb = target.wte.weight.detach()
    p = {}
    for s in (1.0, -1.0):
        d = subcomponent_edit(dec, matrix, c, unemb, target_id, alpha, s)
        p[s] = mean_p_o(with_weight_delta(target, matrix, d), windows, mask, target_id, batch_size)
    return (1.0 if p[1.0] >= p[-1.0] else -1.0), p


# ---------------------------------------------------------------- the stage


def heatmap_table(evs: EvalSet, eval_set: EyeWindows, models: dict, target: nn.Module, target_id: int, tok,
                  n_windows: int, batch_size: int) -> pd.DataFrame:
    """Per-token P('o') and KL for the first held-out windows (those where the subcomponent fires first)."""
    has_fire = evs.fire.any(1).numpy()
    order = np.r_[np.flatnonzero(has_fire), np.flatnonzero(~has_fire)][:n_windows]
    sub = EvalSet(evs.windows[order], evs.fire[order], evs.surround[order], evs.eye[order], evs.base[order],
                  evs.global_windows[:1], evs.global_base[:1])
    base_p = F.softmax(sub.base, -1)[..., target_id]
    per = {name: per_token(m, sub, target_id, batch_size) for name, m in models.items()}
    rows = []
    for k, w in enumerate(order):
        for t in range(sub.windows.shape[1]):
            row = {"window": int(k), "eval_index": int(w), "t": t, "token": tok.decode([int(sub.windows[k, t])]),
                   "firing": bool(sub.fire[k, t]), "eye": bool(sub.eye[k, t]), "surrounding": bool(sub.surround[k, t]),
                   "p_o_target": float(base_p[k, t])}
            for name, d in per.items():
                row[f"p_o_{name}"] = float(d["p_o"][k, t])
                row[f"kl_{name}"] = float(d["kl"][k, t])
            rows.append(row)
    return pd.DataFrame(rows)
