"""benchmarks/workflow_walltime.py: the run folder's name and the summary over repeats."""

import importlib.util
from pathlib import Path

import pytest
from project import merged_config

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("workflow_walltime", ROOT / "benchmarks" / "workflow_walltime.py")
walltime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(walltime)


def test_results_name_is_the_last_config_that_sets_it(tmp_path):
    (tmp_path / "a.yaml").write_text("name: ci\nseed: 0\n")
    (tmp_path / "b.yaml").write_text("seeds: []\n")
    (tmp_path / "c.yaml").write_text("name: other\n")
    assert walltime.results_name([tmp_path / "a.yaml", tmp_path / "b.yaml"]) == "ci"
    assert walltime.results_name([tmp_path / "a.yaml", tmp_path / "c.yaml"]) == "other"
    with pytest.raises(SystemExit, match="no `name`"):
        walltime.results_name([tmp_path / "b.yaml"])


def test_summary_is_median_min_max_per_total():
    runs = [{"wall_seconds": w, "job_seconds": j, "job_cpu_seconds": c, "jobs": 19}
            for w, j, c in [(422.0, 432.0, 268.0), (264.0, 278.0, 203.0), (256.0, 267.0, 194.0)]]
    s = walltime.summarise(runs)
    assert s["repeats"] == 3 and s["jobs"] == 19
    assert s["wall_seconds"] == {"median": 264.0, "min": 256.0, "max": 422.0}
    assert s["job_cpu_seconds"]["median"] == 203.0


def test_the_same_work_override_switches_off_the_newer_work():
    import yaml

    from vpd.config import parse_config

    base = yaml.safe_load((ROOT / "config" / "ci.yaml").read_text())
    override = yaml.safe_load((ROOT / "benchmarks" / "ci_same_work_as_6d0e0ac.yaml").read_text())
    cfg = parse_config(merged_config(base, override))
    assert cfg.seeds == [] and not cfg.adversary_ablation.enabled


def test_the_eager_override_turns_compiling_off_as_the_ci_config_does():
    import yaml

    from vpd.config import parse_config

    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    override = yaml.safe_load((ROOT / "benchmarks" / "ci_eager_decomposition.yaml").read_text())
    ci = yaml.safe_load((ROOT / "config" / "ci.yaml").read_text())
    assert default["decompose"]["fused_kernels"] is True
    merged = parse_config(merged_config(default, override))
    assert merged.decompose.fused_kernels is False and ci["decompose"]["fused_kernels"] is False
    assert set(override) == {"decompose"} and set(override["decompose"]) == {"fused_kernels"}
