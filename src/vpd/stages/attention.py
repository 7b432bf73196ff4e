"""The attention stage: previous-token scores, Q/K subcomponent pairs and their ablations, with figures."""

import logging
from pathlib import Path

import pandas as pd
import torch

from vpd.analysis.attention import (
    ablated_attention_by_offset,
    activation_stats,
    attention_by_offset,
    grid_frame,
    pair_scores,
    prev_token_scores,
    qk_head_norms,
    top_pairs,
    zscore_per_head,
)
from vpd.data.tokens import TokenShard
from vpd.decomp.api import load_decomposition
from vpd.plots import save_figure
from vpd.plots.attention import plot_attn_ablation, plot_attn_contrib_grid, plot_prev_token_scores, plot_qk_weight_norm
from vpd.utils.io import atomic_path, write_json, write_yaml
from vpd.utils.provenance import upstream_digests
from vpd.utils.runtime import default_device, start_stage


def run_attention(cfg, target_dir, decomposition_dir, tokens_dir, out_dir) -> None:
    """fig_prev_token_scores, fig_qk_comp_weight_norm, fig_attn_contrib_grid, fig_attn_patterns_q_intv
    (+ .csv of each), attention_pairs.csv, summary.json and final_config.yaml in out_dir."""
    log = logging.getLogger("vpd")
    out_dir = start_stage(cfg.seed, out_dir)
    device = default_device()
    acfg = cfg.attention
    target, dec = load_decomposition(target_dir, decomposition_dir, dtype=torch.float32, device=device,
                                     expect=cfg.target.model)
    n_layer, n_head = target.cfg.n_layer, target.cfg.n_head
    layer = acfg.layer
    if layer >= n_layer:
        log.warning("attention.layer %d does not exist (%d layers): using layer %d", layer, n_layer, n_layer - 1)
        layer = n_layer - 1
    qn, kn = f"h.{layer}.attn.q_proj", f"h.{layer}.attn.k_proj"
    missing = [n for n in (qn, kn) if n not in dec.names]
    if missing:
        raise ValueError(f"attention stage: {missing} are not decomposed (decompose.matrices); decomposed: {dec.names}")
    seq_len = min(cfg.decompose.seq_len or target.cfg.context, target.cfg.context)
    val = Path(tokens_dir) / "val.bin"
    shard = TokenShard(val if val.exists() else Path(tokens_dir) / "train.bin", seq_len)
    text = shard.eval_windows(acfg.n_sequences)[:, :seq_len].to(device)  # [N, T]
    gen = torch.Generator().manual_seed(cfg.seed)
    random_ids = torch.randint(0, target.cfg.vocab_size, tuple(text.shape), generator=gen).to(device)
    batches = list(text.split(acfg.batch_size))

    def save_csv(df, name):
        with atomic_path(out_dir / name) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")

    # 1. previous-token scores of the target
    prev = pd.concat([prev_token_scores(target, b, r) for b, r in zip(batches, random_ids.split(acfg.batch_size))])
    prev = prev.groupby(["layer", "head", "source"], as_index=False)["score"].mean()
    save_csv(prev, "prev_token_scores.csv")
    save_figure(plot_prev_token_scores(prev), out_dir / "fig_prev_token_scores")

    # 2. per-head norms of the alive q/k subcomponents
    stats = activation_stats(dec, batches, [qn, kn])
    alive = {n: stats[n]["mean_ci"] > acfg.alive_threshold for n in (qn, kn)}
    norms = qk_head_norms(dec, layer, n_head, alive)
    save_csv(norms, "qk_comp_weight_norm.csv")
    save_figure(plot_qk_weight_norm(norms, layer), out_dir / "fig_qk_comp_weight_norm")

    # 3. the static pair interaction grid
    max_offset = min(acfg.max_offset, target.cfg.context - 1)
    q_idx, k_idx = torch.nonzero(alive[qn]).flatten(), torch.nonzero(alive[kn]).flatten()
    q_names = [dec.subcomponent_name(qn, int(c)) for c in q_idx]
    k_names = [dec.subcomponent_name(kn, int(c)) for c in k_idx]
    summary = {"layer": layer, "alive_q": len(q_names), "alive_k": len(k_names), "max_offset": max_offset,
               "prev_token_pair": None}
    best = prev[prev["source"] == "text"].sort_values("score", ascending=False).iloc[0]
    summary["best_prev_token_head_text"] = {"layer": int(best["layer"]), "head": int(best["head"]), "score": float(best["score"])}
    if len(q_names) and len(k_names):
        _, Uq = dec.components(qn)
        _, Uk = dec.components(kn)
        scores = pair_scores(Uq[q_idx], Uk[k_idx], stats[qn]["mean_act"][q_idx], stats[kn]["mean_act"][k_idx],
                             target.rope_cos, target.rope_sin, n_head, max_offset)
        z = zscore_per_head(scores)
        grid = grid_frame(z, q_names, k_names)
        top = top_pairs(z, q_names, k_names, acfg.top_pairs, acfg.prev_token_offset_max)
    else:
        log.warning("attention: no alive q or k subcomponent in layer %d (alive q %d, k %d)", layer, len(q_names), len(k_names))
        grid = pd.DataFrame(columns=["q", "k", "head", "offset", "z", "pair"])
        top = pd.DataFrame(columns=["rank", "q", "k", "max_abs_z", "peak_head", "peak_offset", "peak_z", "pos_peak_head",
                                    "pos_peak_offset", "pos_peak_z", "z_offset1_mean_heads", "previous_token"])
    save_csv(grid, "attn_contrib_grid.csv")
    save_figure(plot_attn_contrib_grid(grid, top), out_dir / "fig_attn_contrib_grid")

    # 4. ablate each of the top q subcomponents (by mean CI) at one query position
    T = text.shape[1]
    qpos = acfg.ablation_position % T
    n_off = min(20, qpos)
    ranked_q = sorted(q_idx.tolist(), key=lambda c: -float(stats[qn]["mean_ci"][c]))[: acfg.top_pairs]
    prev_pairs = top[top["previous_token"].astype(bool)] if len(top) else top
    named_q = None
    if len(prev_pairs):
        row = prev_pairs.iloc[0]
        named_q = int(str(row["q"]).rsplit(":", 1)[1])
        if named_q not in ranked_q:
            ranked_q.append(named_q)
    before = sum(attention_by_offset(target, b, n_off, query_pos=qpos) for b in batches) / len(batches)  # [L, H, τ]
    abl_rows = []
    recent = {}
    for c in ranked_q:
        after = sum(ablated_attention_by_offset(dec, target, b, qn, c, qpos, n_off) for b in batches) / len(batches)
        name = dec.subcomponent_name(qn, c)
        for h in range(n_head):
            for tau in range(n_off + 1):
                abl_rows.append({"q": name, "head": h, "offset": tau, "before": float(before[layer, h, tau]),
                                 "after": float(after[layer, h, tau])})
        span = slice(1, acfg.prev_token_offset_max + 1)
        recent[name] = {"before": before[layer, :, span].sum(-1).tolist(), "after": after[layer, :, span].sum(-1).tolist()}
    ablation = pd.DataFrame(abl_rows, columns=["q", "head", "offset", "before", "after"])
    save_csv(ablation, "attn_patterns_q_intv.csv")
    if len(ablation):
        save_figure(plot_attn_ablation(ablation), out_dir / "fig_attn_patterns_q_intv")
    else:
        save_figure(plot_attn_contrib_grid(grid, top), out_dir / "fig_attn_patterns_q_intv")

    # 5. the pair table and the named previous-token pair
    if len(top):
        drops = {name: float(sum(r["before"]) - sum(r["after"])) for name, r in recent.items()}
        top = top.assign(recent_attention_drop_when_q_ablated=[drops.get(q, float("nan")) for q in top["q"]])
    save_csv(top, "attention_pairs.csv")
    if named_q is not None:
        row = prev_pairs.iloc[0]
        name = dec.subcomponent_name(qn, named_q)
        head = int(row["pos_peak_head"])

        def head_drop(n: str) -> float:  # loss of recent-token attention in the pair's head
            return recent[n]["before"][head] - recent[n]["after"][head]

        summary["prev_token_pair"] = {
            "q": row["q"], "k": row["k"], "head": head, "peak_offset": int(row["pos_peak_offset"]),
            "peak_z": float(row["pos_peak_z"]), "ablation_position": qpos,
            "recent_attention_before": recent[name]["before"], "recent_attention_after": recent[name]["after"],
            "recent_attention_drop_in_head": head_drop(name),
            "recent_attention_drop_in_head_relative": head_drop(name) / max(recent[name]["before"][head], 1e-12),
            # among the ablated q subcomponents, does this one remove the most recent-token attention
            # in its own head (the claim: the pair carries that head's previous-token attention)?
            "drops_most_in_its_head": bool(max(recent, key=head_drop) == name),
            "drops_most_over_all_heads": bool(max(recent, key=lambda n: sum(recent[n]["before"]) - sum(recent[n]["after"])) == name),
        }
    summary["recent_attention_by_ablated_q"] = recent
    write_json(out_dir / "summary.json", summary)
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"),
        "inputs": upstream_digests(target=target_dir, tokens=tokens_dir, decomposition=decomposition_dir),
    })
    log.info("attention: %s", {k: v for k, v in summary.items() if k != "recent_attention_by_ablated_q"})
