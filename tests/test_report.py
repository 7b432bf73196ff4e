"""Report: a notebook executes with papermill on tiny fake artifacts; README.md links what exists with the
paper's numbers beside ours and lists what is missing; every notebook has a parameters cell."""

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from vpd.config import load_config  # noqa: E402
from vpd.report.readme import SECTIONS, run_report  # noqa: E402
from vpd.utils.io import write_json, write_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _fake_results(tmp_path: Path):
    cfg = load_config(ROOT / "config" / "ci.yaml")
    results = tmp_path / "results" / cfg.name
    write_yaml(results / "config.yaml", cfg.model_dump(mode="json"))
    att = results / "attribution"
    att.mkdir(parents=True)
    pd.DataFrame([
        {"prompt": "princess", "variant": "adversarial", "n_nodes": 42, "p_target": 0.3, "p_ci": 0.9, "p_stochastic": 0.8,
         "p_adversarial": 0.2, "paper_n_nodes": "150", "paper_p_target": "0.586", "paper_p_ci": "1.000",
         "paper_p_stochastic": "0.999", "paper_p_adversarial": "0.443"},
    ]).to_csv(att / "graphs.csv", index=False)
    graph = {"metadata": {"prompt": "The princess lost", "prompt_tokens": ["The", " princess", " lost"],
                          "info": {"scores": {"n_nodes": 42, "p_target": 0.3, "p_ci": 0.9, "p_stochastic": 0.8, "p_adversarial": 0.2}}},
             "qParams": {}, "links": [{"source": "1_0_0", "target": "9_5_2", "weight": 0.5}],
             "nodes": [{"node_id": "1_0_0", "feature_type": "vpd subcomponent", "clerp": "0.attn.q_proj:0", "ctx_idx": 0,
                        "ci": 1.0, "activation": 0.3, "influence": 0.7},
                       {"node_id": "9_5_2", "feature_type": "logit", "clerp": "logit", "ctx_idx": 2, "ci": None,
                        "activation": 1.0, "influence": 0.0}]}
    write_json(att / "graph_princess.json", graph)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    fig.savefig(att / "fig_graph_princess.png")
    plt.close(fig)
    write_json(results / "attention" / "summary.json", {
        "best_prev_token_head_text": {"layer": 1, "head": 0, "score": 0.42},
        "prev_token_pair": {"q": "1.attn.q_proj:3", "k": "1.attn.k_proj:7", "head": 0, "peak_offset": 1, "peak_z": 5.0,
                            "ablation_position": 31, "recent_attention_before": [0.5, 0.1], "recent_attention_after": [0.1, 0.1]}})
    return cfg, results


def test_every_notebook_has_a_parameters_cell_and_only_reads_artifacts():
    keys = [s.key for s in SECTIONS]
    assert keys == ["01_target", "02_decomposition", "03_pareto_splitting", "04_editing", "05_graphs", "06_attention"]
    for key in keys:
        nb = nbformat.read(ROOT / "notebooks" / f"{key}.ipynb", as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and "results_dir" in params[0].source
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "decompose(" not in code and ".backward(" not in code and "run_" not in code


def test_report_readme_links_outputs_with_paper_numbers(tmp_path):
    cfg, results = _fake_results(tmp_path)
    run_report(cfg, results, results / "paper")
    text = (results / "paper" / "README.md").read_text()
    assert "[attribution/graph_princess.json](graph_princess.json)" in text  # linked at its copy in paper/
    assert "0.443" in text and "150" in text  # the paper's numbers
    assert "42 nodes" in text  # ours
    assert "![graph:princess figure](graph_princess.png)" in text
    assert "previous-token pair 1.attn.q_proj:3 × 1.attn.k_proj:7" in text
    assert "not produced (stage not run)" in text  # e.g. evaluation/ is absent here
    for line in text.splitlines():
        assert "unreadable" not in line, line
    # each labelled output that exists is copied into paper/ under its label, byte for byte, any
    # other output under its path in the run: every link of the README resolves inside paper/
    copy = results / "paper" / "graph_princess.json"
    assert copy.read_bytes() == (results / "attribution" / "graph_princess.json").read_bytes()
    assert (results / "paper" / "attention" / "summary.json").read_bytes() == (results / "attention" / "summary.json").read_bytes()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all((results / "paper" / link).is_file() for link in links if not link.startswith("../notebooks")), links
    assert not (results / "paper" / "fig_pareto-mse.png").exists()  # baselines did not run here


def test_notebook_executes_with_papermill_on_fake_artifacts(tmp_path):
    pytest.importorskip("ipykernel")
    from vpd.report.notebooks import execute_notebook

    cfg, results = _fake_results(tmp_path)
    out = execute_notebook(cfg, ROOT / "notebooks" / "05_graphs.ipynb", results, results / "notebooks")
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata["papermill"]["parameters"]["results_dir"] == str(results.resolve())
    outputs = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "error" not in [o.get("output_type") for c in nb.cells for o in c.get("outputs", [])]
    assert "graph_princess.json" in outputs and "0.586" in outputs
    assert not list((results / "notebooks").glob(".*tmp*"))  # the atomic write left no temp file
