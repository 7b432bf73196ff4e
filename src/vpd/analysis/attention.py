"""Attention through q/k subcomponents: previous-token scores, per-head norms, pair interaction
strength through the RoPE rotation, and a one-position ablation of a query subcomponent.

- Previous-token score of (layer, head): mean attention probability from query t to key t - 1
  (t >= 1), on random tokens and on held-out text.
- Per-head norm of subcomponent c of q_proj/k_proj: the rank-1 matrix V_c U_c restricted to the
  output columns of head h has Frobenius norm ||V_c|| ||U_c[h]||.
- Pair interaction (static): with the mean activation ā_c of each subcomponent over the tokens
  where it is causally important (CI > 0), the query it writes is ā_q U^q_q and the key ā_k U^k_k.
  The RoPE attention logit between a query at position i and a key at i - τ depends only on τ:
  score_h(q, k, τ) = <rope(ā_q U^q_q,h ; τ), rope(ā_k U^k_k,h ; 0)> / sqrt(hd), computed with the
  target's own rotary tables. Signs come from the mean activations. Scores are z-scored per head
  over all alive pairs and offsets.
- Ablation: subtract one q subcomponent's contribution a_c(x) U_c at one query position (mask 0
  there, everything else the original weights) and compare attention by offset at that position.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import pandas as pd
import torch

from vpd.target.model import apply_rope


# ---------------------------------------------------------------- target attention
@torch.no_grad()
def attention_by_offset(target, ids: torch.Tensor, max_offset: int, query_pos: Optional[int] = None) -> torch.Tensor:
    """Mean attention probability by offset: [n_layer, n_head, max_offset + 1].

    Averaged over sequences and over every query position t >= offset (or only `query_pos`).
    """
    _, att = target.attention_patterns(ids)  # [L, B, H, T, T]
    T = att.shape[-1]
    out = torch.zeros(att.shape[0], att.shape[2], max_offset + 1)
    for tau in range(min(max_offset, T - 1) + 1):
        diag = att.diagonal(offset=-tau, dim1=-2, dim2=-1)  # [L, B, H, T - tau]: query t = tau + j, key j
        if query_pos is not None:
            q = query_pos % T
            if q - tau < 0:
                continue
            out[:, :, tau] = diag[..., q - tau].mean(1)
        else:
            out[:, :, tau] = diag.mean(dim=(1, -1))
    return out


def prev_token_scores(target, text_ids: torch.Tensor, random_ids: torch.Tensor) -> pd.DataFrame:
    """Tidy (layer, head, source, score): attention at offset 1 on text and on random tokens."""
    rows = []
    for source, ids in (("text", text_ids), ("random tokens", random_ids)):
        by = attention_by_offset(target, ids, 1)[:, :, 1]  # [L, H]
        rows += [{"layer": l, "head": h, "source": source, "score": float(by[l, h])}
                 for l in range(by.shape[0]) for h in range(by.shape[1])]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- static q/k structure
def per_head(U: torch.Tensor, n_head: int) -> torch.Tensor:
    """U [C, d_out] -> [C, H, hd]."""
    C, d = U.shape
    return U.reshape(C, n_head, d // n_head)


def qk_head_norms(dec, layer: int, n_head: int, alive: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Tidy (matrix, subcomponent, c, head, norm, frac) for the alive q/k subcomponents of `layer`."""
    rows = []
    for kind in ("q_proj", "k_proj"):
        name = f"h.{layer}.attn.{kind}"
        V, U = dec.components(name)
        norms = V.norm(dim=0)[:, None] * per_head(U, n_head).norm(dim=-1)  # [C, H]
        frac = norms / norms.sum(-1, keepdim=True).clamp_min(1e-30)
        for c in torch.nonzero(alive[name]).flatten().tolist():
            for h in range(n_head):
                rows.append({"matrix": kind[0], "subcomponent": dec.subcomponent_name(name, c), "c": c, "head": h,
                             "norm": float(norms[c, h]), "frac": float(frac[c, h])})
    return pd.DataFrame(rows)


def pair_scores(
    Uq: torch.Tensor, Uk: torch.Tensor, mean_q: torch.Tensor, mean_k: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, n_head: int, max_offset: int,
) -> torch.Tensor:
    """Attention-logit contribution of every (q, k) subcomponent pair: [Cq, Ck, H, max_offset + 1].

    Uq [Cq, d], Uk [Ck, d] (rows = output directions), mean_q [Cq], mean_k [Ck] (signed mean
    activations), cos/sin [T, hd] the target's rotary tables (T > max_offset).
    """
    q = per_head(Uq * mean_q[:, None], n_head)  # [Cq, H, hd]
    k = per_head(Uk * mean_k[:, None], n_head)  # [Ck, H, hd]
    hd = q.shape[-1]
    k0 = apply_rope(k[None].transpose(1, 2), cos[:1], sin[:1])[0].transpose(0, 1)  # key at position 0: [Ck, H, hd]
    out = []
    for tau in range(max_offset + 1):
        q_tau = apply_rope(q[None].transpose(1, 2), cos[tau:tau + 1], sin[tau:tau + 1])[0].transpose(0, 1)  # [Cq, H, hd]
        out.append(torch.einsum("qhd,khd->qkh", q_tau, k0) / math.sqrt(hd))
    return torch.stack(out, -1)


def zscore_per_head(scores: torch.Tensor) -> torch.Tensor:
    """scores [Cq, Ck, H, τ] standardised over (q, k, τ) within each head."""
    flat = scores.permute(2, 0, 1, 3).reshape(scores.shape[2], -1)  # [H, *]
    mu, sd = flat.mean(1), flat.std(1).clamp_min(1e-30)
    return (scores - mu[None, None, :, None]) / sd[None, None, :, None]


def grid_frame(z: torch.Tensor, q_names: list[str], k_names: list[str]) -> pd.DataFrame:
    """Tidy (q, k, pair, head, offset, z) from z [Cq, Ck, H, τ], with head 'mean' the mean over heads."""
    Cq, Ck, H, Tn = z.shape
    mean = z.mean(2, keepdim=True)
    full = torch.cat([mean, z], 2)  # [Cq, Ck, H + 1, τ]
    idx = torch.cartesian_prod(torch.arange(Cq), torch.arange(Ck), torch.arange(H + 1), torch.arange(Tn))
    vals = full.reshape(-1)
    heads = ["mean"] + [str(h) for h in range(H)]
    return pd.DataFrame({
        "q": [q_names[i] for i in idx[:, 0].tolist()],
        "k": [k_names[i] for i in idx[:, 1].tolist()],
        "head": [heads[i] for i in idx[:, 2].tolist()],
        "offset": idx[:, 3].numpy(),
        "z": vals.numpy(),
    }).assign(pair=lambda d: d["q"] + " × " + d["k"])


def top_pairs(z: torch.Tensor, q_names: list[str], k_names: list[str], n: int, prev_max: int) -> pd.DataFrame:
    """The n pairs with the largest |z| in any head and offset, with their peak head/offset and a
    previous-token flag (positive peak at an offset in 1..prev_max)."""
    Cq, Ck, H, Tn = z.shape
    best = z.abs().reshape(Cq, Ck, -1).max(-1).values  # [Cq, Ck]
    order = best.flatten().argsort(descending=True)[:n]
    rows = []
    for rank, flat in enumerate(order.tolist()):
        qi, ki = divmod(flat, Ck)
        zz = z[qi, ki]  # [H, τ]
        h, tau = divmod(int(zz.abs().flatten().argmax()), Tn)
        hp, taup = divmod(int(zz.flatten().argmax()), Tn)
        rows.append({
            "rank": rank + 1, "q": q_names[qi], "k": k_names[ki], "max_abs_z": float(best[qi, ki]),
            "peak_head": h, "peak_offset": tau, "peak_z": float(zz[h, tau]),
            "pos_peak_head": hp, "pos_peak_offset": taup, "pos_peak_z": float(zz[hp, taup]),
            "z_offset1_mean_heads": float(zz[:, 1].mean()) if Tn > 1 else float("nan"),
            "previous_token": bool(1 <= taup <= prev_max and zz[hp, taup] > 0),
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- ablation of one q subcomponent
@torch.no_grad()
def ablated_attention_by_offset(
    dec, target, ids: torch.Tensor, name: str, c: int, query_pos: int, max_offset: int
) -> torch.Tensor:
    """attention_by_offset at `query_pos` with subcomponent c of matrix `name` removed there: [L, H, τ]."""
    V, U = dec.components(name)
    module = dict(target.named_modules())[name]
    q = query_pos % ids.shape[1]

    def hook(mod, args, out):
        x = args[0][:, q].float()  # [B, d_in]
        out = out.clone()
        out[:, q] -= ((x @ V[:, c])[:, None] * U[c][None]).to(out.dtype)
        return out

    handle = module.register_forward_hook(hook)
    try:
        return attention_by_offset(target, ids, max_offset, query_pos=q)
    finally:
        handle.remove()


@torch.no_grad()
def activation_stats(dec, batches: list[torch.Tensor], names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Per matrix: mean CI [C], mean activation where CI > 0 [C] (0 where never important), firing count [C]."""
    acc = {n: {"ci": 0.0, "act": 0.0, "count": 0.0, "tokens": 0} for n in names}
    for batch in batches:
        _, inputs = dec.matrix_inputs(batch)
        lower, _ = dec.ci_from_inputs(inputs)
        for n in names:
            V, _ = dec.components(n)
            a = inputs[n].float() @ V  # [B, T, C]
            g = lower[n].float()
            fire = (g > 0).float()
            acc[n]["ci"] = acc[n]["ci"] + g.sum((0, 1))
            acc[n]["act"] = acc[n]["act"] + (a * fire).sum((0, 1))
            acc[n]["count"] = acc[n]["count"] + fire.sum((0, 1))
            acc[n]["tokens"] += g.shape[0] * g.shape[1]
    out = {}
    for n, s in acc.items():
        count = torch.as_tensor(s["count"])
        out[n] = {"mean_ci": s["ci"] / s["tokens"], "mean_act": s["act"] / count.clamp_min(1), "count": count}
    return out


# ---------------------------------------------------------------- the `attention` stage
