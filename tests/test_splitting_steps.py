"""benchmarks/splitting_steps.py: the firing totals, the in-training alive trajectory and the ratio."""

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from project import merged_config

from vpd.evaluate.metrics import CIAccumulator

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("splitting_steps", ROOT / "benchmarks" / "splitting_steps.py")
splitting_steps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(splitting_steps)


def test_firing_summary_totals_dead_never_firing_and_rare_over_matrices():
    acc = CIAccumulator((0.0,))
    acc.update({
        # columns: never fires (dead); fires on 1 token (rare); fires on all 4
        "h.0.mlp.c_fc": torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.2]]),
        # columns: never fires (dead); fires on 2 tokens (rare at rare_tokens=2)
        "h.0.mlp.down_proj": torch.tensor([[0.0, 0.1], [0.0, 0.1], [0.0, 0.0], [0.0, 0.0]]),
    })
    out = splitting_steps.firing_summary(acc, rare_tokens=2, alive_eps=1e-6)
    assert out == {
        "C": 5, "alive": 3, "dead": 2, "never_fire": 2, "rare": 2, "rare_tokens": 2,
        "l0": pytest.approx((1 + 4) / 4 + 2 / 4),  # firing counts per token, summed over matrices
        "n_tokens": 4,
    }


def test_alive_trajectory_keeps_only_the_eval_records():
    records = [{"step": 10, "train/loss": 1.0}, {"step": 250, "eval/alive_total": 4096},
               {"step": 500, "eval/alive_total": 3990, "eval/l0_total": 80.0}]
    assert splitting_steps.alive_trajectory(records) == [(250, 4096), (500, 3990)]


def test_alive_ratio_needs_both_runs():
    rows = [{"variant": "split_1x", "alive": 4000}, {"variant": "split_4x", "alive": 6000}]
    assert splitting_steps.alive_ratio(rows, "split_4x", "split_1x") == pytest.approx(1.5)
    assert splitting_steps.alive_ratio(rows[:1], "split_4x", "split_1x") is None


def test_the_override_lengthens_only_the_splitting_runs_which_then_compile():
    from vpd.config import parse_config
    from vpd.decomp.variants import variant_decompose_config
    from vpd.sweeps import find_variant
    from vpd.target.model import TargetLM

    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    override = yaml.safe_load((ROOT / "benchmarks" / "splitting_1800_steps.yaml").read_text())
    assert override == {"feature_splitting": {"steps": 1800}}
    base, longer = parse_config(default), parse_config(merged_config(default, override))
    assert longer.model_dump(exclude={"feature_splitting"}) == base.model_dump(exclude={"feature_splitting"})
    assert longer.feature_splitting.model_dump(exclude={"steps"}) == base.feature_splitting.model_dump(exclude={"steps"})
    target = TargetLM(longer.target.model)
    for name, C in (("split_1x", 512), ("split_4x", 2048)):
        dcfg = variant_decompose_config(longer, find_variant(longer, name), target)
        assert dcfg.steps == 1800 and [m.C for m in dcfg.matrices] == [C] * 8
        assert dcfg.compiles  # 1,800 >= decompose.fused_kernels_min_steps (1,000); the 600-step runs do not
        assert not variant_decompose_config(base, find_variant(base, name), target).compiles
