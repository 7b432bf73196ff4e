"""results/<name>/paper/README.md: every output of the run, by paper section, with the paper's number beside ours.

The sections (one notebook each) and the outputs they show are listed once in `SECTIONS`; the
notebooks use the same list through `vpd.report.nb`. Outputs a stage has not produced are listed
as missing, so the report can be built from whatever part of the DAG has run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from vpd.analysis.attribution import PAPER_GRAPHS
from vpd.utils.io import write_bytes, write_text
from vpd.utils.provenance import config_digest, source_commit


log = logging.getLogger("vpd")


@dataclass
class Item:
    label: str  # the paper's label, or a short name for our own outputs
    path: str  # relative to results/<name>/ (may contain a {prompt}/{stem} pattern expanded by the stage)
    paper: str = "—"  # the paper's number(s), as printed


@dataclass
class Section:
    key: str  # notebook stem
    title: str
    items: list[Item] = field(default_factory=list)


SECTIONS: list[Section] = [
    Section("01_target", "Target model", [
        Item("tab:model-hyperparams", "target/config.json", "4L, d 768, 6x128 heads, MLP 3072, vocab 50,277, ctx 512"),
        Item("fig:target-curve", "target/fig_target_curve.png", "target val CE 2.71"),
        Item("validation curve", "target/curve.csv"),
        Item("target probes", "target/probes.csv",
             "P(her | 'The princess lost') 0.586; goals here: agreement >= 90%, P(her) >= 0.2, P(mouth | eye) >= 0.5"),
        Item("corpus support for the pronoun probes", "corpus/pronoun_support.csv"),
    ]),
    Section("02_decomposition", "Decomposition and evaluation", [
        Item("training losses", "decomposition/fig_losses.png"),
        Item("L0 during training", "decomposition/fig_l0.png"),
        Item("paper vs this run", "evaluation/paper_vs_ours.md"),
        Item("tab:vpd-ce-compute-compar", "evaluation/mask_strategies.csv",
             "unmasked 2.72 / 82.4%; stochastic 2.84 / 26.9%; CI>0 2.94 / 11.8%; CI>0.1 2.95 / 11.3%; CI-as-mask 2.99 / 9.4%; CI>0.5 3.02 / 8.0%"),
        Item("compute recovered", "evaluation/compute_recovered.csv"),
        Item("tab:vpd-pgd-ce", "evaluation/pgd_steps.csv", "20: 0.83, 40: 1.35, 80: 3.84, 160: 25.3, 320: 40.2; zero ablation 67.2"),
        Item("tab:vpd-train-losses", "evaluation/vpd_losses.csv",
             "stochastic KL 0.238, PGD-20 KL 0.927, training PPGD KL 0.573, Δ-L2 2.4e-6"),
        Item("dead and rarely firing subcomponents", "evaluation/firing_counts.csv", "74.4% dead (1 - 9,972 / 38,912)"),
        Item("fig:generations-showcase", "evaluation/generations.md"),
        Item("seeds: headline numbers", "seeds/headline.csv"),
        Item("tab:seed-mmcs", "seeds/seed_mmcs.csv", "VPD U 0.48, V 0.52; PLT local-MSE 0.81; CLT 0.61; at init ~0.13"),
        Item("fig:adv-vs-no-adv", "adversary_ablation/fig_adv-vs-no-adv.png", "no-adversary run is much worse at small r"),
        Item("CE at fixed source values", "adversary_ablation/ce_vs_source.csv"),
        Item("tab:num-components-per-layer", "evaluation/l0_by_layer.csv", "L0 total 205.0 (44.6/18.9/49.5/92.0); alive 9,972 / 38,912"),
        Item("fig compute recovered", "evaluation/fig_compute_recovered.png"),
        Item("fig PGD", "evaluation/fig_pgd.png"),
        Item("fig L0 by layer", "evaluation/fig_l0_by_layer.png"),
    ]),
    Section("03_pareto_splitting", "Pareto frontier and feature splitting", [
        Item("fig:pareto-mse", "baselines/fig_pareto.png", "VPD CI>0 L0 16.1 δ 0.32; PLT k16 δ 0.95, k64 0.57; CLT k16 1.20, k64 0.50"),
        Item("pareto points", "baselines/pareto.csv"),
        Item("transcoders", "baselines/transcoders.csv"),
        Item("fig:feature_splitting", "feature_splitting/fig_feature_splitting.png",
             "VPD 6,489 / 6,507 / 7,187 / 6,520; PLT 4k 10,229, 32k 58,765; CLT 4k 10,827, 32k 61,085"),
        Item("fig:splitting-heatmap", "feature_splitting/fig_splitting_heatmap.png", "PLT 4k->32k 57.0%; VPD 0.5x->4x 2.7%"),
        Item("splitting table", "feature_splitting/splitting.csv"),
    ]),
    Section("04_editing", "Component browser and emoticon edit", [
        Item("fig:components-showcase", "harvest/browser/index.html", "static HTML browser"),
        Item("emoticon subcomponents", "edit/emoticon_subcomponents.csv", "2.mlp.down_proj 1672, 2359, 2623, 3290, 3327, 3382; edited 2359"),
        Item("edit results", "edit/edit_results.csv", "edit α=3: P 0.881, KL 0.018 / 0.0027; LoRA n=947 λ=10: 0.964, 0.0077 / 0.0023"),
        Item("fig:model-editing-pareto", "edit/fig_model-editing-pareto.png", "as above"),
        Item("fig:model-editing-heatmap", "edit/fig_model-editing-heatmap.png"),
    ]),
    Section("05_graphs", "Attribution graphs", [
        Item("graph table", "attribution/graphs.csv",
             "princess: 150 nodes, P(her) 0.586 target / 1.000 CI / 0.999 stoch / 0.443 adversarial; CI-only 6 nodes, < 0.0005; prince 160 nodes, 0.383"),
    ]),
    Section("06_attention", "Attention q/k pairs", [
        Item("fig:prev_token_scores", "attention/fig_prev_token_scores.png", "L1H1 ~60%"),
        Item("fig:qk_comp_weight_norm", "attention/fig_qk_comp_weight_norm.png", "no subcomponent sits in one head"),
        Item("fig:attn_contrib_grid", "attention/fig_attn_contrib_grid.png", "previous-token pair peaks at small offset"),
        Item("fig:attn_patterns_q_intv", "attention/fig_attn_patterns_q_intv.png", "only one q subcomponent removes recent-token attention"),
        Item("attention pairs", "attention/attention_pairs.csv"),
        Item("summary", "attention/summary.json"),
    ]),
]


def graph_items(cfg) -> list[Item]:
    """The attribution stage's per-prompt outputs (names come from the config)."""
    items = []
    for prompt, variant, stem in cfg.attribution.graph_stems():
        paper = PAPER_GRAPHS.get((prompt, variant), {})
        text = ", ".join(f"{k} {v}" for k, v in paper.items()) or "—"
        label = f"graph:{prompt}" + ("" if stem == f"graph_{prompt}" else f" ({variant})")
        items += [Item(label, f"attribution/{stem}.json", text), Item(label + " figure", f"attribution/fig_{stem}.png", text)]
    return items


def sections_for(cfg) -> list[Section]:
    out = []
    for s in SECTIONS:
        items = list(s.items) + (graph_items(cfg) if s.key == "05_graphs" else [])
        out.append(Section(s.key, s.title, items))
    return out


# ---------------------------------------------------------------- "this run" summaries
def _fmt(x) -> str:
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def _curve(path: Path) -> str:
    df = pd.read_csv(path)
    cols = [c for c in df.columns if "val" in c.lower() and "ce" in c.lower()] or [df.columns[-1]]
    return f"final {cols[0]} {_fmt(df[cols[0]].iloc[-1])} ({len(df)} points)"


def _target_config(path: Path) -> str:
    c = json.loads(path.read_text())
    return f"{c.get('n_layer')}L, d {c.get('d_model')}, {c.get('n_head')} heads, MLP {c.get('d_mlp')}, vocab {c.get('vocab_size')}, ctx {c.get('context')}"


def _attention_summary(path: Path) -> str:
    s = json.loads(path.read_text())
    best = s.get("best_prev_token_head_text", {})
    text = f"best previous-token head L{best.get('layer')}H{best.get('head')} {_fmt(best.get('score'))} on text"
    pair = s.get("prev_token_pair")
    if pair:
        text += (f"; previous-token pair {pair['q']} × {pair['k']} (head {pair['head']}, peak τ={pair['peak_offset']}); "
                 f"ablating the q at position {pair['ablation_position']}: recent attention "
                 f"{[round(x, 3) for x in pair['recent_attention_before']]} -> {[round(x, 3) for x in pair['recent_attention_after']]}")
    else:
        text += "; no previous-token pair among the top pairs"
    return text


def _graph_json(path: Path) -> str:
    info = json.loads(path.read_text())["metadata"].get("info", {})
    s = info.get("scores", {})
    return (f"{s.get('n_nodes')} nodes, P {_fmt(s.get('p_target'))} target / {_fmt(s.get('p_ci'))} CI / "
            f"{_fmt(s.get('p_stochastic'))} stoch / {_fmt(s.get('p_adversarial'))} adversarial")


def _adversary_ablation(path: Path) -> str:
    df = pd.read_csv(path)
    low = df[df["r"] == df["r"].min()].set_index("run")["ce_increase"]
    return f"CE increase at r = {df['r'].min():g}: " + ", ".join(f"{run} {v:.3f}" for run, v in low.items())


SUMMARIES: dict[str, Callable[[Path], str]] = {
    "target/curve.csv": _curve,
    "adversary_ablation/ce_vs_source.csv": _adversary_ablation,
    "target/config.json": _target_config,
    "attention/summary.json": _attention_summary,
}


def summarize(path: Path, rel: str) -> str:
    try:
        if rel in SUMMARIES:
            return SUMMARIES[rel](path)
        if rel.endswith(".json") and rel.startswith("attribution/"):
            return _graph_json(path)
        if rel.endswith(".csv"):
            return f"{len(pd.read_csv(path))} rows (table below)"
        if rel.endswith(".png"):
            return "figure below"
        if rel.endswith(".md"):
            return "included below"
        return "produced"
    except Exception as exc:  # a malformed artifact must not hide the rest of the report
        return f"unreadable ({type(exc).__name__}: {exc})"


def csv_markdown(path: Path, max_rows: int = 24) -> str:
    df = pd.read_csv(path)
    more = f"\n\n({len(df) - max_rows} more rows in the file)" if len(df) > max_rows else ""
    return df.head(max_rows).to_markdown(index=False, floatfmt=".4g") + more


def render(cfg, results_dir: Path, paper_dir: Path) -> str:
    """The README text. Outputs are linked at their copies in paper_dir (`report_copies`), so the
    folder reads on its own, e.g. when committed without the rest of the run."""
    results_dir, paper_dir = Path(results_dir), Path(paper_dir)
    copies = report_copies(cfg, results_dir)

    lines = [f"# Paper outputs of run `{cfg.name}`", "",
             f"Rendered by the code at commit `{source_commit()}`; config `{cfg.name}`, sha256 of its resolved values "
             f"`{config_digest(cfg.model_dump(mode='json'))}`.", "",
             "Every output of this run by paper section, with the paper's number beside ours. The paper's target is "
             "a 67M-parameter model on the Pile; this run's scale is set by its config, so compare directions and "
             "sizes of effects rather than absolute values. Executed notebooks: `../notebooks/`. Every file linked "
             "here is a copy in this folder: an output with a paper label under its label (e.g. "
             "`fig_pareto-mse.png`), any other under its path in the run.", ""]
    for section in sections_for(cfg):
        nb = results_dir / "notebooks" / f"{section.key}.ipynb"
        nb_link = f" ([notebook]({os.path.relpath(nb, paper_dir)}))" if nb.exists() else ""
        lines += [f"## {section.title}{nb_link}", "", "| output | file | paper | this run |", "|---|---|---|---|"]
        extras = []
        for item in section.items:
            path = results_dir / item.path
            rel = copies[path]
            if path.exists():
                lines.append(f"| {item.label} | [{item.path}]({rel}) | {item.paper} | {summarize(path, item.path)} |")
                if item.path.endswith(".png"):
                    extras += [f"**{item.label}**", "", f"![{item.label}]({rel})", ""]
                elif item.path.endswith(".csv"):
                    try:
                        extras += [f"**{item.label}** (`{item.path}`)", "", csv_markdown(path), ""]
                    except Exception as exc:
                        extras += [f"**{item.label}**: unreadable ({exc})", ""]
                elif item.path.endswith(".md"):
                    extras += [path.read_text(encoding="utf-8"), ""]
            else:
                lines.append(f"| {item.label} | {item.path} | {item.paper} | not produced (stage not run) |")
        lines += [""] + extras
    return "\n".join(lines).rstrip() + "\n"


PAPER_LABEL_PREFIXES = ("fig:", "tab:", "graph:")


def label_stem(label: str) -> str:
    """The file stem of a paper label: `fig:pareto-mse` -> fig_pareto-mse, `graph:princess (ci_only)`
    -> graph_princess_ci_only; a graph's figure shares its graph's stem."""
    label = label.removesuffix(" figure")
    stem = label.split(" (")[0].replace(":", "_")
    return stem + ("_" + label.split(" (")[1].rstrip(")") if " (" in label else "")


def report_copies(cfg, results_dir: Path) -> dict[Path, str]:
    """{source file: its path inside paper/} for every output the README lists.

    An output with a paper label goes under its label, so each paper figure and table has one
    file named after it (`fig:pareto-mse` at baselines/fig_pareto.png -> fig_pareto-mse.png, plus
    the PDF beside a PNG); any other output keeps its path in the run (evaluation/...).
    """
    copies: dict[Path, str] = {}
    for section in sections_for(cfg):
        for item in section.items:
            src = Path(results_dir) / item.path
            if not item.label.startswith(PAPER_LABEL_PREFIXES):
                copies.setdefault(src, item.path)
                continue
            copies[src] = label_stem(item.label) + src.suffix
            if src.suffix == ".png":
                copies[src.with_suffix(".pdf")] = label_stem(item.label) + ".pdf"
    return copies


def run_report(cfg, results_dir: Path, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for src, name in report_copies(cfg, Path(results_dir)).items():
        if src.is_file():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            write_bytes(out_dir / name, src.read_bytes())
    write_text(out_dir / "README.md", render(cfg, Path(results_dir), out_dir))
    log.info("report: %s", out_dir / "README.md")
