"""The evaluate, baselines and feature_splitting stages on a tiny random target in tmp_path.

The setup: the CI config's target architecture with random weights saved like the train_target
stage would (plus a synthetic curve.csv), random token shards, and a decomposition of a few steps.
The tests check that each stage writes its declared files with the right rows, and that a stage
run twice gives identical tables.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from vpd.config import parse_config
from vpd.decomp import decompose
from vpd.evaluate.mask_strategies import standard_strategies
from vpd.target.model import TargetLM

from project import write_tokenizer_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config():
    data = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    data["precision"] = "fp32"
    data["target"]["train"]["eval_sequences"] = 4
    d = data["decompose"]
    d.update(steps=3, faithfulness_warmup_steps=2, batch_size=2, eval_every=100, checkpoint_every=100)
    d["matrices"] = [{"pattern": "h.*.attn.*", "C": 4}, {"pattern": "h.*.mlp.*", "C": 8}]
    d["ci_fn"] = {"kind": "per_matrix_mlp", "hidden": [8]}
    data["evaluate"].update(batch_size=2, pgd_steps=[0, 2, 4], pgd_batches=1)
    data["adversary_ablation"].update(steps=2)
    b = data["baselines"]
    b.update(n_latents=[16, 32], k=[2, 4], vpd_importance_coeffs=[1e-3], vpd_steps=2)
    b["train"].update(steps=4, batch_size=2, warmup_steps=1)
    f = data["feature_splitting"]
    f.update(c_multipliers=[0.5, 1.0], steps=2, faithfulness_warmup_steps=1, n_latents=[16, 32], k=2)
    return parse_config(data)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    cfg = tiny_config()
    mcfg = cfg.target.model
    torch.manual_seed(0)
    target = TargetLM(mcfg).eval()
    target.save_pretrained(root / "target")
    steps = np.arange(0, 60, 10)
    flops = steps * 1e6
    pd.DataFrame({"step": steps, "tokens": steps * 512, "flops": flops,
                  "val_ce": np.linspace(6.5, 5.0, len(steps))}).to_csv(root / "target/curve.csv", index=False)
    tokens = root / "tokens"
    tokens.mkdir()
    write_tokenizer_files(tokens, 300)  # evaluate encodes and decodes its showcase generations (ids < vocab_size)
    rng = np.random.default_rng(0)
    for split, n in (("train", 4000), ("val", 1000)):
        rng.integers(0, mcfg.vocab_size, n, dtype=np.uint16).tofile(tokens / f"{split}.bin")
    dec = decompose(target, lambda gen: torch.randint(0, mcfg.vocab_size, (2, mcfg.context), generator=gen),
                    cfg.decompose, seed=0, progress=False, out_dir=root / "decomposition")  # writes metrics.jsonl
    dec.save(root / "decomposition")
    return cfg, root


def test_evaluate_writes_every_table_with_one_row_per_strategy_and_is_deterministic(setup):
    from vpd.stages.evaluate import OUTPUT_TABLES, run_evaluate

    cfg, root = setup
    outs = [root / "eval_a", root / "eval_b"]
    for out in outs:
        run_evaluate(cfg, root / "target", root / "tokens", root / "decomposition", out)
    out = outs[0]
    for name in [*OUTPUT_TABLES, "paper_vs_ours.md", "final_config.yaml", "fig_compute_recovered.png",
                 "fig_compute_recovered.pdf", "fig_pgd.png", "fig_l0_by_layer.pdf"]:
        assert (out / name).stat().st_size > 0, name
    strategies = list(standard_strategies(cfg.evaluate.thresholds))
    rec = pd.read_csv(out / "compute_recovered.csv")
    assert rec["name"].tolist() == strategies
    assert rec["fraction"].between(0, 1).all()
    # A random target's CE is far above the synthetic curve's first point: reported, not extrapolated.
    assert set(rec["status"]) <= {"ok", "worse_than_init", "better_than_final"}
    table = pd.read_csv(out / "mask_strategies.csv")
    assert table["strategy"].tolist() == ["target", *strategies]
    assert (table["n_tokens"] == 4 * cfg.target.model.context).all()
    n_matrices = 6 * cfg.target.model.n_layer
    by_matrix = pd.read_csv(out / "l0_by_matrix.csv")
    assert len(by_matrix) == n_matrices * len(cfg.evaluate.thresholds)
    assert (by_matrix["alive"] <= by_matrix["C"]).all()
    by_layer = pd.read_csv(out / "l0_by_layer.csv")
    assert len(by_layer) == (cfg.target.model.n_layer + 1) * len(cfg.evaluate.thresholds)
    pgd = pd.read_csv(out / "pgd_steps.csv")
    assert pgd["steps"].astype(str).tolist() == ["0", "2", "4", "zero_ablation"]
    assert "| unmasked: val CE |" in (out / "paper_vs_ours.md").read_text()
    for name in OUTPUT_TABLES:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def _sweep_jobs(cfg, root):
    """What the workflow's `transcoder` and `decompose_variant` jobs write, for every job of the sweeps."""
    from vpd.stages.transcoder import run_transcoder
    from vpd.stages.decompose import run_decompose
    from vpd.sweeps import transcoder_jobs, variant_jobs

    for job in transcoder_jobs(cfg):
        if not (root / "transcoders" / job.name / "pareto_point.json").exists():
            run_transcoder(cfg, root / "target", root / "tokens", job.name, root / "transcoders" / job.name, progress=False)
    for job in variant_jobs(cfg):
        if not (root / "variants" / job.name / "decomposition.json").exists():
            run_decompose(cfg, root / "target", root / "tokens", root / "variants" / job.name, variant=job.name)


def test_a_transcoder_job_is_the_same_whichever_job_ran_before_it(setup):
    """Each transcoder starts from its own seeded init and the shared data order: rerunning one job
    alone, after others, gives bit-identical weights and scores."""
    from vpd.stages.transcoder import run_transcoder

    cfg, root = setup
    _sweep_jobs(cfg, root)
    again = root / "transcoder_again"
    run_transcoder(cfg, root / "target", root / "tokens", "clt_L32_k4", again, progress=False)
    first = root / "transcoders" / "clt_L32_k4"
    for name in ("transcoder.safetensors", "local.csv", "pareto_point.json"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    # two jobs of the same shape start apart: the init seed mixes in the name
    a = (root / "transcoders" / "plt_L16_k2" / "transcoder.safetensors").read_bytes()
    b = (root / "transcoders" / "plt_L16_k4" / "transcoder.safetensors").read_bytes()
    assert a != b


def test_a_transcoder_name_outside_the_sweep_fails_before_any_compute(setup, tmp_path):
    from vpd.stages.transcoder import run_transcoder
    from vpd.config import ConfigError

    cfg, root = setup
    with pytest.raises(ConfigError, match=r"'plt_L99_k2' is not in the baselines sweep.*plt_L16_k2"):
        run_transcoder(cfg, root / "target", root / "tokens", "plt_L99_k2", tmp_path / "tc")
    assert not (tmp_path / "tc").exists()


def test_a_variant_is_the_decompose_stage_with_the_variants_change(setup):
    cfg, root = setup
    _sweep_jobs(cfg, root)
    coeff = yaml.safe_load((root / "variants/coeff_0.001/final_config.yaml").read_text())
    assert coeff["decompose"]["coeffs"]["importance_minimality"] == 1e-3
    assert coeff["decompose"]["steps"] == cfg.baselines.vpd_steps
    assert coeff["variant"]["purpose"] == "pareto"
    half = yaml.safe_load((root / "variants/split_0.5x/final_config.yaml").read_text())
    # MLP matrices only, at half of their C (8 -> 4), with the splitting section's steps
    assert half["decompose"]["matrices"] == [{"pattern": f"h.{i}.mlp.{m}", "C": 4}
                                             for i in range(cfg.target.model.n_layer) for m in ("c_fc", "down_proj")]
    assert half["decompose"]["steps"] == cfg.feature_splitting.steps
    assert half["provenance"]["seed"] == cfg.seed


def test_adversary_ablation_masks_every_run_at_each_source_value(setup):
    from vpd.stages.adversary_ablation import run_adversary_ablation

    cfg, root = setup
    _sweep_jobs(cfg, root)
    off = yaml.safe_load((root / "variants/adversary_off/final_config.yaml").read_text())
    assert off["decompose"]["coeffs"]["adversarial_recon"] == 0.0 and off["variant"]["adversary"] is False
    out = root / "adversary_ablation"
    run_adversary_ablation(cfg, root / "target", root / "tokens", root / "variants", out)
    table = pd.read_csv(out / "ce_vs_source.csv")
    values = cfg.adversary_ablation.source_values
    assert sorted(zip(table["run"], table["r"])) == sorted((run, r) for run in ("adversary_off", "adversary_on")
                                                             for r in values)
    # r = 1 with Δ at 1 is the target's own weights: no CE increase, no KL, for both runs
    full = table[table["r"] == 1.0]
    assert full["ce_increase"].abs().max() < 1e-4 and full["kl"].abs().max() < 1e-5
    assert (table["n_tokens"] == table["n_tokens"].iloc[0]).all()
    assert (out / "fig_adv-vs-no-adv.png").stat().st_size > 0
    inputs = yaml.safe_load((out / "final_config.yaml").read_text())["inputs"]
    assert {"variants/adversary_on/components.safetensors", "variants/adversary_off/components.safetensors"} <= set(inputs)


def test_baselines_write_transcoders_and_one_pareto_row_per_method_and_setting(setup):
    from vpd.stages.baselines import run_baselines

    cfg, root = setup
    _sweep_jobs(cfg, root)
    out = root / "baselines"
    run_baselines(cfg, root / "target", root / "tokens", root / "decomposition", root / "transcoders",
                  root / "variants", out)
    b = cfg.baselines
    n_tc = len(b.kinds) * len(b.n_latents) * len(b.k)
    local = pd.read_csv(out / "transcoders.csv")
    assert len(local) == n_tc * cfg.target.model.n_layer
    assert local["dead_fraction"].between(0, 1).all() and (local["fvu"] >= 0).all()
    pareto = pd.read_csv(out / "pareto.csv")
    n_vpd = len(b.vpd_thresholds) * (1 + len(b.vpd_importance_coeffs))
    assert len(pareto) == n_tc + n_vpd
    assert not pareto.duplicated(["method", "setting"]).any()
    assert set(pareto["method"]) == {"VPD", "PLT", "CLT"}
    assert (out / "fig_pareto.png").exists() and (out / "fig_pareto.pdf").exists()
    inputs = yaml.safe_load((out / "final_config.yaml").read_text())["inputs"]
    assert "transcoders/clt_L32_k4/transcoder.safetensors" in inputs and "variants/coeff_0.001/components.safetensors" in inputs
    # The comparison only reads the jobs' files: a second run gives identical tables.
    before = (out / "pareto.csv").read_bytes()
    run_baselines(cfg, root / "target", root / "tokens", root / "decomposition", root / "transcoders",
                  root / "variants", out)
    assert (out / "pareto.csv").read_bytes() == before


def test_feature_splitting_counts_alive_units_and_matches_every_run_pair(setup):
    from vpd.stages.feature_splitting import run_feature_splitting

    cfg, root = setup
    _sweep_jobs(cfg, root)
    out = root / "splitting"
    run_feature_splitting(cfg, root / "target", root / "tokens", root / "transcoders", root / "variants", out)
    fs = cfg.feature_splitting
    split = pd.read_csv(out / "splitting.csv")
    assert len(split) == len(fs.c_multipliers) + len(fs.kinds) * len(fs.n_latents)
    vpd = split[split["method"] == "VPD"]
    # MLP matrices only: capacity = sum over the 2 * n_layer MLP matrices of the scaled C (base 8).
    assert vpd["capacity"].tolist() == [2 * cfg.target.model.n_layer * 4, 2 * cfg.target.model.n_layer * 8]
    assert (split["alive"] <= split["capacity"]).all()
    matches = pd.read_csv(out / "splitting_matches.csv")
    n_runs = {"VPD": len(fs.c_multipliers), **{k.upper(): len(fs.n_latents) for k in fs.kinds}}
    assert len(matches) == sum(n * (n - 1) for n in n_runs.values())
    assert matches["largest_to_smallest"].sum() == len(n_runs)
    assert matches["share_matched"].dropna().between(0, 1).all()
    for name in ("fig_feature_splitting.png", "fig_splitting_heatmap.pdf", "final_config.yaml"):
        assert (out / name).exists()
