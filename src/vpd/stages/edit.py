"""The emoticon-edit stage: the eye subcomponent, the edit sweep against rank-1 LoRAs, with figures."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vpd.analysis.config import EditConfig
from vpd.analysis.edit import (
    EvalSet,
    EyeWindows,
    PAPER,
    PAPER_NOTE,
    choose_sign,
    edit_metrics,
    heatmap_table,
    logits_of,
    mean_p_o,
    rank_subcomponents,
    region_masks,
    split_eval,
    subcomponent_edit,
    with_weight_delta,
)
from vpd.analysis.harvest import load_decomposition, resolve_seq_len
from vpd.analysis.lora import train_lora
from vpd.data.emoticons import emoticon_vocab, find_eyes
from vpd.data.tokenizer import load_tokenizer
from vpd.data.tokens import TokenShard
from vpd.plots import save_figure
from vpd.plots.edit import plot_editing_heatmap, plot_editing_pareto
from vpd.utils.io import write_csv, write_json, write_yaml
from vpd.utils.provenance import upstream_digests
from vpd.utils.runtime import log, start_stage


def run_edit(cfg, target_dir: Path, tokens_dir: Path, decomposition_dir: Path, out_dir: Path) -> pd.DataFrame:
    """The `edit` stage (see `vpd.analysis.edit`); returns the results table."""
    out_dir = start_stage(cfg.seed, out_dir)  # also keeps freed [B, T, V] logits in the heap: half a LoRA step here
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
    p_base_train = mean_p_o(target, train_set.windows, check_mask, ev_tokens.target_id, bs)

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
