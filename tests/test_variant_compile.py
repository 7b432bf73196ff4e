"""benchmarks/variant_compile.py: the per-job summary, and every job of the default config resolves
to the decomposition its Snakemake job trains."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("variant_compile", ROOT / "benchmarks" / "variant_compile.py")
variant_compile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(variant_compile)


def test_summary_nets_the_per_step_saving_against_the_compile():
    cold = {"job": "split_1x", "configured_steps": 600, "evals": 3, "batch": [4, 64], "C_total": 4096,
            "step_eager_s": [0.50, 0.70, 0.52], "step_compiled_s": [0.40, 0.45, 0.47],  # savings 0.10, 0.25, 0.05
            "eval_eager_s": [2.0, 2.2, 2.1], "eval_compiled_s": [1.5, 2.0, 1.6],  # savings 0.5, 0.2, 0.5
            "compile_overhead_s": 100.0}
    warm = {**cold, "compile_overhead_s": 10.0}
    row = variant_compile.summarise(cold, warm)
    assert row["saving_per_step_s"] == pytest.approx(0.10)  # median of the paired rounds, not of the medians
    assert row["eval_saving_s"] == pytest.approx(0.5)
    assert row["step_eager_s"] == pytest.approx(0.52) and row["step_compiled_s"] == pytest.approx(0.45)
    assert row["net_gain_cold_s"] == pytest.approx(600 * 0.10 + 3 * 0.5 - 100.0)  # -38.5: compiling loses
    assert row["net_gain_warm_s"] == pytest.approx(600 * 0.10 + 3 * 0.5 - 10.0)  # +51.5: it pays


def test_jobs_resolve_to_the_decompositions_the_workflow_trains():
    from vpd.config import load_config
    from vpd.target.model import TargetLM

    cfg = load_config(ROOT / "config" / "config.yaml")
    target = TargetLM(cfg.target.model)
    assert variant_compile.job_decompose_config(cfg, "main", target) == cfg.decompose
    split = variant_compile.job_decompose_config(cfg, "split_4x", target)
    assert [m.C for m in split.matrices] == [4 * 512] * 8 and split.steps == cfg.feature_splitting.steps
    assert variant_compile.job_decompose_config(cfg, "adversary_off", target).coeffs.adversarial_recon == 0.0
