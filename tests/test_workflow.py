"""The CI config's whole DAG runs end to end in a temp dir, and reruns are no-ops."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from project import merged_config

ROOT = Path(__file__).resolve().parents[1]


def _snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(ROOT / "config/ci.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)


# Loaded into every stage process of the run (PYTHONPATH): records each file the stage opens for
# reading with Python's open / os.open, with the stage's --out folder. Reads done in native code
# (safetensors, parquet) are not seen.
AUDIT_HOOK = r"""
import os, sys
_log = os.environ.get("VPD_OPEN_LOG")
def _audit(event, args):
    if event != "open" or not _log:
        return
    path, mode, flags = args
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    reading = ("r" in mode and not set(mode) & set("wax+")) if isinstance(mode, str) else not flags & (os.O_WRONLY | os.O_RDWR)
    if reading and "--out" in sys.argv:
        out = sys.argv[sys.argv.index("--out") + 1]
        with open(os.path.join(_log, str(os.getpid())), "a") as f:  # append: not a read
            f.write(f"{out}\t{os.fsdecode(path)}\n")
sys.addaudithook(_audit)
"""


def _declared_outputs(workdir: Path) -> set[str]:
    res = _snakemake(workdir, "-n", "--forceall")
    assert res.returncode == 0, res.stderr[-3000:]
    return {f.strip() for line in res.stdout.splitlines() if line.strip().startswith("output:")
            for f in line.split("output:", 1)[1].split(",")}


@pytest.mark.slow
def test_ci_dag_end_to_end(tmp_path):
    hook, opened = tmp_path / "hook", tmp_path / "opened"
    hook.mkdir()
    opened.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    env = {**os.environ, "PYTHONPATH": str(hook), "VPD_OPEN_LOG": str(opened)}
    workdir = tmp_path / "work"
    res = _snakemake(workdir, env=env)
    assert res.returncode == 0, (res.stdout[-4000:], res.stderr[-6000:])
    out = workdir / "results" / "ci"
    # Every file a stage read from another stage's folder is a declared output of some rule.
    declared = _declared_outputs(workdir)
    reads = set()
    for record in opened.iterdir():
        for line in record.read_text().splitlines():
            own, path = line.split("\t")
            rel = os.path.relpath(os.path.join(workdir, path) if not os.path.isabs(path) else path, workdir)
            if rel.startswith("results/") and not rel.startswith(own.rstrip("/") + "/"):
                reads.add(rel)
    assert any(r.endswith("target/curve.csv") for r in reads) and any(r.endswith("tokenizer/val.bin") for r in reads)
    assert reads <= declared, sorted(reads - declared)
    stats = json.loads((out / "corpus/stats.json").read_text())
    assert stats["train"]["documents"] > 0 and stats["val"]["documents"] > 0
    support = pd.read_csv(out / "corpus/pronoun_support.csv")
    assert len(support) == 24 and support["occurrences"].ge(support["next_female"] + support["next_male"]).all()
    probes = pd.read_csv(out / "target/probes.csv").set_index(["probe", "quantity"])["n"]
    assert probes[("pronoun agreement", "accuracy")] == 120
    assert probes[("pronoun agreement (diagnostic), pronoun, after a sentence", "accuracy")] == 36
    meta = json.loads((out / "tokenizer/meta.json").read_text())
    assert meta["vocab_size"] == 512
    curve = pd.read_csv(out / "target/curve.csv")
    assert curve["step"].iloc[0] == 0 and len(curve) >= 10
    assert curve["val_ce"].iloc[-1] < curve["val_ce"].iloc[0] - 0.5, "target did not learn"
    assert (out / "decomposition/components.safetensors").stat().st_size > 0
    recovered = pd.read_csv(out / "evaluation/compute_recovered.csv")
    strategies = pd.read_csv(out / "evaluation/mask_strategies.csv")
    assert recovered["name"].tolist() == strategies["strategy"].tolist()[1:]  # one row per strategy
    assert recovered["fraction"].between(0, 1).all()
    assert "| unmasked: compute recovered |" in (out / "evaluation/paper_vs_ours.md").read_text()
    pgd = pd.read_csv(out / "evaluation/pgd_steps.csv")
    assert {"kl_mean", "kl_sem", "n_batches"} <= set(pgd.columns)
    firing = pd.read_csv(out / "evaluation/firing_counts.csv")
    total = firing[(firing["matrix"] == "all") & (firing["threshold"] == 0.0)].iloc[0]
    assert total["C"] == firing.loc[(firing["matrix"] != "all") & (firing["threshold"] == 0.0), "C"].sum()
    assert total["never_fire"] + total["rare"] <= total["C"]
    losses = pd.read_csv(out / "evaluation/vpd_losses.csv")
    assert {"Δ-L2 faithfulness", "stochastic KL (Δ sampled)", "stochastic KL (Δ dropped)"} <= set(losses["term"])
    generations = pd.read_csv(out / "evaluation/generations.csv", keep_default_na=False)
    assert generations.groupby("prompt").size().eq(6).all()  # target + 4 strategies + PGD
    assert generations.loc[generations["model"] == "target", "agrees_with_target"].eq(1.0).all()
    headline = pd.read_csv(out / "seeds/headline.csv").set_index("quantity")
    assert headline.loc["L0 (CI > 0)", "n"] == 2 and headline.loc["PGD-20 KL", "n"] == 2
    mmcs = pd.read_csv(out / "seeds/seed_mmcs.csv")
    assert mmcs["method"].tolist() == ["VPD", "VPD", "PLT", "PLT", "CLT", "CLT", "random init"]
    assert mmcs.loc[mmcs["method"] == "PLT", "n_alive"].gt(0).all() and mmcs["U"].between(0, 1).all()
    pareto = pd.read_csv(out / "baselines/pareto.csv")
    assert not pareto.duplicated(["method", "setting"]).any() and set(pareto["method"]) == {"VPD", "PLT", "CLT"}
    assert len(pareto) == 2 * 2 * 2 + 3 * 2  # (plt, clt) x 2 sizes x 2 k; 3 thresholds x (main + 1 coefficient)
    # The seeds headline has each seed's Pareto points; seed 0 is the main run, so its point is pareto.csv's.
    for method, setting in (("VPD", "tau=0"), ("PLT", "L=256,k=8"), ("CLT", "L=256,k=8")):
        main = pareto.loc[(pareto["method"] == method) & (pareto["setting"] == setting), "ce_increase"].iloc[0]
        row = headline.loc[f"{method} Pareto {setting}: CE increase"]
        assert row["n"] == 2 and row["min"] - 1e-6 <= main <= row["max"] + 1e-6, (method, main, row.to_dict())
    split = pd.read_csv(out / "feature_splitting/splitting.csv")
    assert split.groupby("method").size().to_dict() == {"VPD": 4, "PLT": 2, "CLT": 2}
    # the seeds headline has each seed's feature-splitting ratios; seed 0's are splitting.csv's own
    for method, (lo, hi), label in (("VPD", (1, 4), "alive(4x C) / alive(1x C)"),
                                    ("PLT", (64, 256), "alive(L256) / alive(L64)"),
                                    ("CLT", (64, 256), "alive(L256) / alive(L64)")):
        alive = {s: split.loc[(split["method"] == method) & (split["scale"] == s), "alive"].iloc[0] for s in (lo, hi)}
        row = headline.loc[f"feature splitting {method}: {label}"]
        main = alive[hi] / alive[lo]
        assert row["n"] == 2 and row["min"] - 1e-9 <= main <= row["max"] + 1e-9, (method, main, row.to_dict())
    assert (split["alive"] <= split["capacity"]).all()
    assert (out / "harvest/browser/index.html").stat().st_size > 0
    edits = pd.read_csv(out / "edit/edit_results.csv")
    assert {"edit", "lora"} <= set(edits["method"].str.lower().str.split().str[0])
    graphs = pd.read_csv(out / "attribution/graphs.csv")
    assert graphs["n_nodes"].gt(0).all()
    graph = json.loads((out / "attribution/graph_princess.json").read_text())
    node_ids = {n["node_id"] for n in graph["nodes"]}
    assert {"metadata", "nodes", "links"} <= set(graph) and all(link["source"] in node_ids for link in graph["links"])
    paper = out / "paper"
    for label_file in ["fig_target-curve.png", "tab_vpd-ce-compute-compar.csv", "fig_pareto-mse.png",
                       "fig_model-editing-pareto.png", "graph_princess.json", "fig_attn_contrib_grid.png",
                       "fig_adv-vs-no-adv.png"]:
        assert (paper / label_file).stat().st_size > 0, label_file
    assert len(list((out / "notebooks").glob("*.ipynb"))) == 6
    # Every stage after the decomposition records the sha256 of the upstream files it read.
    folders = {"target": "target", "tokens": "tokenizer", "decomposition": "decomposition"}
    for stage in ("evaluation", "baselines", "feature_splitting", "harvest", "edit", "attribution", "attention", "seeds",
                  "adversary_ablation"):
        inputs = yaml.safe_load((out / stage / "final_config.yaml").read_text())["inputs"]
        assert "target/model.safetensors" in inputs, stage
        for key, digest in inputs.items():
            kind, name = key.split("/", 1)  # a stage folder, or transcoders/<job>, variants/<job>
            path = out / folders[kind] / name if kind in folders else out / key
            assert digest == hashlib.sha256(path.read_bytes()).hexdigest(), (stage, key)
    # One job folder per trained model of the sweeps, each with its own log and benchmark.
    # baselines grid 8 + the seed-1 MMCS pair (plt, clt) + seed 1's splitting ends (L64, L256 per kind)
    assert len(list((out / "transcoders").glob("*/transcoder.safetensors"))) == 8 + 2 + 4
    assert sorted(p.name for p in (out / "variants").iterdir()) == ["adversary_off", "adversary_on", "coeff_0.002",
                                                                    "seed_1", "split_0.5x", "split_1x", "split_1x_s1",
                                                                    "split_2x", "split_4x", "split_4x_s1"]
    assert len(list((out / "benchmarks").glob("transcoder_*.tsv"))) == 8 + 2 + 4
    assert len(list((out / "logs").glob("decompose_variant_*.log"))) == 10
    ablation = pd.read_csv(out / "adversary_ablation" / "ce_vs_source.csv")
    assert sorted(set(ablation["run"])) == ["adversary_off", "adversary_on"] and len(ablation) == 6
    tmp_path = workdir
    # Everything is up to date: a second run has nothing to do.
    again = _snakemake(tmp_path, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # A config change that no stage's params hold rewrites the merged config and reruns nothing else
    # but the job whose output is missing, in the same invocation.
    before = (out / "config.yaml").read_bytes()
    (out / "paper/README.md").unlink()
    changed = _snakemake(tmp_path, "--config", "threads=1")
    assert changed.returncode == 0, changed.stderr[-3000:]
    log = changed.stdout + changed.stderr
    assert "checkpoint resolved_config" in log and "rule report" in log and "rule corpus" not in log
    assert "rule notebook" not in log and (out / "paper/README.md").stat().st_size > 0
    assert (out / "config.yaml").read_bytes() != before and "threads: 1" in (out / "config.yaml").read_text()


def _contains(resolved, expected) -> bool:
    """Every key and value of `expected` is in `resolved` (which may hold more keys: the schema's defaults)."""
    if isinstance(expected, dict):
        return isinstance(resolved, dict) and all(k in resolved and _contains(resolved[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(resolved, list) and len(resolved) == len(expected) and all(map(_contains, resolved, expected))
    return resolved == expected


def test_config_files_merge_over_the_default_from_any_working_directory(tmp_path):
    """--configfile config/ci.yaml from a folder outside the repository resolves as it does in the repository:
    every key ci.yaml sets takes its value, every other key of config/config.yaml keeps the default's."""
    res = _snakemake(tmp_path, "results/ci/config.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    resolved = yaml.safe_load((tmp_path / "results/ci/config.yaml").read_text())
    default = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    ci = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    assert _contains(resolved, merged_config(default, ci))
    # keys where the two files differ, so the check cannot pass by either file alone
    assert resolved["decompose"]["fused_kernels"] is False and default["decompose"]["fused_kernels"] is True
    assert "emoticon_val_fraction" not in ci["corpus"] and resolved["corpus"]["emoticon_val_fraction"] == 0.2
    assert len(resolved["corpus"]["sources"]) == len(ci["corpus"]["sources"]) != len(default["corpus"]["sources"])
