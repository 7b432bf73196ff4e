"""The attribution stage: the paper's prompts' graphs, CI-only and adversarial pruning, with figures."""

import logging
from pathlib import Path

import pandas as pd
import torch

from vpd.analysis.attribution import PAPER_GRAPHS, SCORE_KEYS, attribution_graph, graph_to_json
from vpd.analysis.pruning import prune_prompt, score_prompt
from vpd.data.tokenizer import load_tokenizer
from vpd.decomp.api import load_decomposition
from vpd.plots import save_figure
from vpd.plots.attribution import plot_graph
from vpd.utils.io import atomic_path, write_json, write_yaml
from vpd.utils.provenance import upstream_digests
from vpd.utils.runtime import default_device, start_stage


def run_attribution(cfg, target_dir, decomposition_dir, out_dir) -> None:
    """Prune and trace every configured prompt: graph_<prompt>[_<variant>].json, fig_<stem>.{png,pdf},
    graphs.csv (ours beside the paper's), pruning_history.csv, final_config.yaml."""
    log = logging.getLogger("vpd")
    out_dir = start_stage(cfg.seed, out_dir)
    device = default_device()
    acfg = cfg.attribution
    target, dec = load_decomposition(target_dir, decomposition_dir, dtype=torch.float32, device=device,
                                     expect=cfg.target.model)
    tok = load_tokenizer(Path(target_dir) / "tokenizer.json")
    gen = torch.Generator().manual_seed(cfg.seed)
    stems = {(p, v): s for p, v, s in acfg.graph_stems()}
    rows, history = [], []
    for prompt in acfg.prompts:
        ids_list = tok.encode(prompt.text).ids
        target_ids = tok.encode(prompt.target).ids
        if not ids_list or not target_ids:
            raise ValueError(f"attribution prompt {prompt.name!r}: text or target encodes to no tokens")
        if len(ids_list) > target.cfg.context:
            raise ValueError(f"attribution prompt {prompt.name!r} has {len(ids_list)} tokens, more than the context {target.cfg.context}")
        target_token = target_ids[0]
        pieces = [tok.decode([i]) for i in ids_list]
        target_piece = tok.decode([target_token])
        if len(target_ids) > 1:
            log.warning("attribution %s: target %r is %d tokens; the graph explains its first token %r",
                        prompt.name, prompt.target, len(target_ids), target_piece)
        log.info("attribution %s: %s -> %r (tokens %s)", prompt.name, pieces, target_piece, ids_list)
        ids = torch.tensor([ids_list], device=device)
        tokenization = {"prompt_pieces": pieces, "target_pieces": [tok.decode([i]) for i in target_ids]}
        ci_lower, ci_upper = dec.ci(ids), dec.ci(ids, upper=True)
        base = score_prompt(dec, ids, target_token, ci_lower, acfg, gen)
        rows.append({"prompt": prompt.name, "variant": "unpruned", **base.as_dict()})
        for vname, variant in acfg.variants.items():
            res = prune_prompt(dec, ids, target_token, variant, acfg, gen, ci_upper=ci_upper)
            scores = score_prompt(dec, ids, target_token, res.ci, acfg, gen)
            graph = attribution_graph(dec, ids, res.ci, target_token, embedding=target.wte, tokens=ids_list)
            stem = stems[(prompt.name, vname)]
            info = {"variant": vname, "scores": scores.as_dict(), "unpruned": base.as_dict(),
                    "paper": PAPER_GRAPHS.get((prompt.name, vname), {}), **tokenization,
                    "objective": {**variant.model_dump(), "loss": acfg.loss, "minimality_coeff": acfg.minimality_coeff,
                                  "p": acfg.p, "steps": acfg.steps, "pgd_steps": acfg.pgd_steps,
                                  "pgd_step_size": acfg.pgd_step_size, "pgd_persistent": acfg.pgd_persistent,
                                  "attack_surface": acfg.attack_surface}}
            data = graph_to_json(graph, slug=f"{cfg.name}-{stem}", prompt=prompt.text, token_strings=pieces,
                                 target_string=target_piece, subcomponent_name=dec.subcomponent_name, info=info)
            write_json(out_dir / f"{stem}.json", data)
            title = (f"{stem}: {prompt.text!r} -> {target_piece!r}, {scores.n_nodes} nodes, "
                     f"P {scores.p_target:.3f} target / {scores.p_ci:.3f} CI / {scores.p_adversarial:.3f} adversarial")
            save_figure(plot_graph(data, title, acfg.figure_links), out_dir / f"fig_{stem}")
            rows.append({"prompt": prompt.name, "variant": vname, **scores.as_dict()})
            history += [{"prompt": prompt.name, "variant": vname, **h} for h in res.history]
            log.info("attribution %s/%s: %s", prompt.name, vname, scores.as_dict())
    table = pd.DataFrame(rows)
    for key in SCORE_KEYS:
        table[f"paper_{key}"] = [PAPER_GRAPHS.get((p, v), {}).get(key, "") for p, v in zip(table["prompt"], table["variant"])]
    with atomic_path(out_dir / "graphs.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out_dir / "pruning_history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False, float_format="%.6g")
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"), "inputs": upstream_digests(target=target_dir, decomposition=decomposition_dir),
    })
