"""Static figure of an attribution graph: token positions on x, matrices (by layer) on y."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection

from vpd.plots import set_theme


def graph_frames(graph_json: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(nodes, links) DataFrames from a circuit-tracer-shaped graph JSON, with figure coordinates."""
    nodes = pd.DataFrame(graph_json["nodes"])
    nodes["row"] = nodes["layer"].map(lambda s: 0 if s == "E" else int(s))
    # spread the nodes of one (position, row) cell horizontally
    nodes["slot"] = nodes.groupby(["ctx_idx", "row"]).cumcount()
    nodes["cell"] = nodes.groupby(["ctx_idx", "row"])["node_id"].transform("count")
    nodes["x"] = nodes["ctx_idx"] + 0.8 * ((nodes["slot"] + 0.5) / nodes["cell"] - 0.5)
    nodes["y"] = nodes["row"].astype(float)
    links = pd.DataFrame(graph_json["links"], columns=["source", "target", "weight"])
    return nodes, links


def plot_graph(graph_json: dict, title: str, max_links: int = 300) -> plt.Figure:
    set_theme()
    nodes, links = graph_frames(graph_json)
    meta = graph_json["metadata"]
    matrices = meta.get("matrices", [])
    tokens = meta["prompt_tokens"]
    n_rows = len(matrices) + 2
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tokens) + 2), max(4.0, 0.32 * n_rows + 1.5)))
    pos = nodes.set_index("node_id")[["x", "y"]]
    if len(links):
        top = links.reindex(links["weight"].abs().sort_values(ascending=False).index).head(max_links)
        seg = np.stack([pos.loc[top["source"]].to_numpy(), pos.loc[top["target"]].to_numpy()], 1)
        w = top["weight"].abs().to_numpy()
        alpha = 0.15 + 0.75 * w / w.max() if w.max() > 0 else np.full_like(w, 0.3)
        colors = [(0.15, 0.35, 0.8, a) if s > 0 else (0.85, 0.2, 0.15, a) for s, a in zip(top["weight"], alpha)]
        ax.add_collection(LineCollection(seg, colors=colors, linewidths=0.4 + 1.6 * w / max(w.max(), 1e-30)))
    infl = nodes["influence"].fillna(0).abs()
    size = 12 + 90 * infl / max(infl.max(), 1e-30)
    kinds = {"embedding": ("#555555", "s"), "vpd subcomponent": ("#2a9d8f", "o"), "logit": ("#e76f51", "D")}
    for kind, (color, marker) in kinds.items():
        sel = nodes["feature_type"] == kind
        ax.scatter(nodes.loc[sel, "x"], nodes.loc[sel, "y"], s=size[sel], c=color, marker=marker, zorder=3,
                   edgecolors="white", linewidths=0.4, label=kind)
    ax.set_xticks(range(len(tokens)), [repr(t) for t in tokens], rotation=0)
    short = [m[2:] if m.startswith("h.") else m for m in matrices]
    ax.set_yticks(range(n_rows), ["embedding", *short, f"logit {meta.get('target_token', '')!r}"])
    ax.set_xlim(-0.6, len(tokens) - 0.4)
    ax.set_ylim(-0.7, n_rows - 0.3)
    ax.set_xlabel("token position")
    ax.set_ylabel("matrix (by layer)")
    ax.set_title(title)
    ax.grid(False)
    ax.legend(loc="upper left", fontsize=7, frameon=True)
    fig.tight_layout()
    return fig
