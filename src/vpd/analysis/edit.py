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
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from vpd.analysis.config import EditConfig
from vpd.analysis.lora import kl_per_token, train_lora
from vpd.data.emoticons import emoticon_vocab, find_eyes
from vpd.utils.io import write_csv, write_json, write_yaml
from vpd.utils.provenance import upstream_digests

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


def _mean_p_o(model: nn.Module, windows: torch.Tensor, mask: torch.Tensor, target_id: int, batch_size: int) -> float:
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
        p[s] = _mean_p_o(with_weight_delta(target, matrix, d), windows, mask, target_id, batch_size)
    return (1.0 if p[1.0] >= p[-1.0] else -1.0), p


# ---------------------------------------------------------------- the stage
def run_edit(cfg, target_dir: Path, tokens_dir: Path, decomposition_dir: Path, out_dir: Path) -> pd.DataFrame:
    """The `edit` stage (see the module docstring); returns the results table."""
    from vpd.analysis.harvest import load_decomposition, resolve_seq_len
    from vpd.data.tokenizer import load_tokenizer
    from vpd.data.tokens import TokenShard
    from vpd.plots import save_figure
    from vpd.plots.edit import plot_editing_heatmap, plot_editing_pareto
    from vpd.utils.runtime import seed_everything

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    ecfg: EditConfig = cfg.edit
    target, dec = load_decomposition(cfg, Path(target_dir), Path(decomposition_dir))
    tok = load_tokenizer(Path(tokens_dir) / "tokenizer.json")
    V = target.cfg.vocab_size
    ev_tokens = emoticon_vocab(tok, ecfg.eyes, ecfg.mouths, V, ecfg.target_token)
    eot = tok.token_to_id(cfg.tokenizer.end_of_text)
    T = resolve_seq_len(ecfg.seq_len, cfg, target.cfg.context)
    after = min(ecfg.context, (T - 1) // 4)
    bs = ecfg.batch_size
    rng = np.random.default_rng(cfg.seed)

    # 1. eyes in both shards; held-out split
    shards = {s: TokenShard(Path(tokens_dir) / f"{s}.bin", T).tokens for s in ("train", "val")}
    found = {s: find_eyes(t, ev_tokens) for s, t in shards.items()}
    pos = {s: EyeWindows.build(shards[s], found[s][0], s, T, after, eot) for s in shards}
    n_faces = {s: len(pos[s]) for s in shards}
    log.info("edit: emoticon eyes: %d in train.bin, %d in val.bin; other uses: %d / %d",
             n_faces["train"], n_faces["val"], len(found["train"][1]), len(found["val"][1]))
    if n_faces["train"] + n_faces["val"] < 2:
        raise ValueError(
            f"edit: found {n_faces['train'] + n_faces['val']} emoticon eyes ({ecfg.eyes} followed by {ecfg.mouths}) in "
            f"{tokens_dir}/{{train,val}}.bin; the edit needs at least 2 (add emoticon-bearing text to the corpus)"
        )
    move, split_note = split_eval(pos["train"].document, n_faces["val"], ecfg.min_eval_windows, cfg.seed)
    train_set = pos["train"].subset(~move)
    eval_set = EyeWindows.concat([pos["val"], pos["train"].subset(move)])
    if len(train_set) == 0 or len(eval_set) == 0:
        raise ValueError(f"edit: {len(train_set)} training and {len(eval_set)} held-out emoticon windows; need both")

    # 2. ranking on all eyes of both shards vs a sample of other uses
    all_pos = EyeWindows.concat([pos["train"], pos["val"]])
    other = [(s, p) for s in shards for p in found[s][1]]
    neg_total = len(other)
    pick = rng.choice(neg_total, size=min(ecfg.n_negatives, neg_total), replace=False) if neg_total else np.empty(0, int)
    neg_parts = []
    for s in shards:
        p_s = np.array(sorted(other[i][1] for i in pick if other[i][0] == s), dtype=np.int64)
        if len(p_s):
            neg_parts.append(EyeWindows.build(shards[s], p_s, s, T, after, eot))
    neg = EyeWindows.concat(neg_parts) if neg_parts else EyeWindows(torch.zeros(0, T, dtype=torch.long), *(np.empty(0),) * 4)
    ranking = rank_subcomponents(dec, all_pos, neg, neg_total, ecfg, target.cfg.d_model, bs)
    editable = ranking[ranking["editable"]]
    if editable.empty:
        raise ValueError(f"edit: no subcomponent of edit.matrices {ecfg.matrices} fires (CI > {ecfg.fire_threshold}) "
                         "on any emoticon eye")
    best = editable.iloc[0]
    matrix, c = str(best["matrix"]), int(best["c"])
    ranking["edited"] = (ranking["matrix"] == matrix) & (ranking["c"] == c)
    write_csv(out_dir / "emoticon_subcomponents.csv", ranking)
    log.info("edit: best subcomponent %s (precision %.3f, recall %.3f)", best["name"], best["precision"], best["recall"])

    # 3. firing masks of the chosen subcomponent (unedited target)
    def ci_of(windows: torch.Tensor) -> torch.Tensor:
        return torch.cat([dec.ci(windows[i:i + bs])[matrix][..., c].float().cpu() for i in range(0, len(windows), bs)])

    fire_tr, _, eye_tr = region_masks(ci_of(train_set.windows), train_set.eye, ecfg.context, ecfg.fire_threshold)
    fire_ev, sur_ev, eye_ev = region_masks(ci_of(eval_set.windows), eval_set.eye, ecfg.context, ecfg.fire_threshold)
    val_shard = TokenShard(Path(tokens_dir) / "val.bin", T)
    global_windows = val_shard.eval_windows(ecfg.global_windows)[:, :T]
    evs = EvalSet(eval_set.windows, fire_ev, sur_ev, eye_ev, logits_of(target, eval_set.windows, bs),
                  global_windows, logits_of(target, global_windows, bs))

    # sign: the one raising P('o') more at the training windows' firing positions (eyes if none fire)
    unemb = target.wte.weight.detach()
    check_mask = fire_tr if fire_tr.any() else eye_tr
    sign, p_sign = choose_sign(target, dec, matrix, c, train_set.windows, check_mask, ev_tokens.target_id,
                               ecfg.reference_alpha, bs)
    p_base_train = _mean_p_o(target, train_set.windows, check_mask, ev_tokens.target_id, bs)

    # 4. edits and LoRA baselines
    common = {"subcomponent": best["name"], "matrix": matrix, "n_eval_windows": len(eval_set),
              "n_firing_positions": int(fire_ev.sum()), "n_surrounding_positions": int(sur_ev.sum()),
              "eval_split": split_note}
    rows = [{"method": "target", "alpha": np.nan, "lambda": np.nan, "n_train": 0, "sign": np.nan,
             **edit_metrics(target, evs, ev_tokens.target_id, bs), **common}]
    models = {}
    for alpha in ecfg.alphas:
        d = subcomponent_edit(dec, matrix, c, unemb, ev_tokens.target_id, alpha, sign)
        m = with_weight_delta(target, matrix, d)
        rows.append({"method": "edit", "alpha": alpha, "lambda": np.nan, "n_train": 0, "sign": sign,
                     **edit_metrics(m, evs, ev_tokens.target_id, bs), **common})
        if alpha == ecfg.reference_alpha:
            models["edit"] = m
        log.info("edit: alpha %.2f -> %s", alpha, {k: round(v, 5) for k, v in rows[-1].items() if k.startswith(("p_o", "kl"))})
    order = rng.permutation(len(train_set))
    lora_log = []
    for n_train in sorted({min(ecfg.lora_n_small, len(train_set)), len(train_set)}):
        idx = torch.from_numpy(np.sort(order[:n_train]))
        for lam in ecfg.lora_lambdas:
            res = train_lora(target, matrix, train_set.windows[idx], fire_tr[idx], ev_tokens.target_id, lam,
                             steps=ecfg.lora_steps, lr=ecfg.lora_lr, batch_size=ecfg.lora_batch_size, seed=cfg.seed)
            m = with_weight_delta(target, matrix, res.lora.delta())
            rows.append({"method": "lora", "alpha": np.nan, "lambda": lam, "n_train": n_train, "sign": np.nan,
                         **edit_metrics(m, evs, ev_tokens.target_id, bs), **common})
            lora_log.append({"n_train": n_train, "lambda": lam, "loss_first": res.losses[0], "loss_last": res.losses[-1],
                             "ce_last": res.ce[-1], "kl_last": res.kl[-1]})
            if lam == ecfg.lora_reference_lambda and n_train == len(train_set):
                models["lora"] = m
            log.info("edit: LoRA n=%d lambda %g -> %s", n_train, lam,
                     {k: round(v, 5) for k, v in rows[-1].items() if k.startswith(("p_o", "kl"))})
    results = pd.DataFrame(rows)
    for col in ("paper_p_o", "paper_kl_surrounding", "paper_kl_global", "paper_note"):
        results[col] = np.nan if col != "paper_note" else ""
    for i, r in results.iterrows():
        key = ("edit", r["alpha"]) if r["method"] == "edit" else ("lora", r["lambda"]) if r["method"] == "lora" else None
        if key in PAPER and (r["method"] == "edit" or r["n_train"] == len(train_set)):
            for k, v in PAPER[key].items():
                results.at[i, k] = v
            results.at[i, "paper_note"] = PAPER_NOTE[key]
    write_csv(out_dir / "edit_results.csv", results)

    # 5. per-token view of a few held-out windows, and the figures
    tokens_df = heatmap_table(evs, eval_set, models, target, ev_tokens.target_id, tok, ecfg.heatmap_windows, bs)
    write_csv(out_dir / "heatmap_tokens.csv", tokens_df)
    save_figure(plot_editing_pareto(results), out_dir / "fig_model-editing-pareto")
    save_figure(plot_editing_heatmap(tokens_df, ecfg.reference_alpha, ecfg.lora_reference_lambda), out_dir / "fig_model-editing-heatmap")
    write_json(out_dir / "edit.json", {
        "subcomponent": best["name"], "matrix": matrix, "c": c, "precision": float(best["precision"]),
        "recall": float(best["recall"]), "f1": float(best["f1"]),
        "target_token": ecfg.target_token, "target_id": ev_tokens.target_id,
        "eye_ids": ev_tokens.eye_ids, "mouth_ids": ev_tokens.mouth_ids,
        "emoticon_eyes": n_faces, "other_uses": {s: int(len(found[s][1])) for s in shards},
        "seq_len": T, "tokens_after_eye": after,
        "split": {"note": split_note, "n_train_windows": len(train_set), "n_eval_windows": len(eval_set),
                  "n_eval_from_val": n_faces["val"], "n_eval_from_train": int(move.sum()),
                  "finding": "ranking used the emoticon eyes of both shards (train and val)"},
        "sign": {"chosen": sign, "reference_alpha": ecfg.reference_alpha,
                 "p_o_train_plus": p_sign[1.0], "p_o_train_minus": p_sign[-1.0], "p_o_train_target": p_base_train,
                 "positions": "firing" if fire_tr.any() else "eyes (the subcomponent fires on no training window)",
                 "mean_activation_on_eyes": float(best["mean_act_eyes"])},
        "lora": lora_log,
        "paper": {"edited": "2.mlp.down_proj:2359", "eye_subcomponents": "2.mlp.down_proj 1672, 2359, 2623, 3290, 3327, 3382",
                  "edit_alpha_3": PAPER[("edit", 3.0)], "lora_n947_lambda_10": PAPER[("lora", 10.0)]},
    })
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"),
        "inputs": upstream_digests(target=target_dir, tokens=tokens_dir, decomposition=decomposition_dir),
    })
    return results


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
