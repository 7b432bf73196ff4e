"""benchmarks/stage_times.py: per-job and per-rule wall times from Snakemake benchmark files."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("stage_times", ROOT / "benchmarks" / "stage_times.py")
stage_times = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_times)

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write(folder: Path, stem: str, seconds: float, rss: float, cpu: float) -> None:
    (folder / f"{stem}.tsv").write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t0\t0\t0\t0\t0\t0\t{cpu}\n")


@pytest.mark.parametrize("stem, rule", [("decompose", "decompose"), ("decompose_variant_split_2x", "decompose_variant"),
                                        ("transcoder_plt_L512_k8", "transcoder"), ("notebook_01_target", "notebook"),
                                        ("evaluate", "evaluate"), ("evaluate_seed_seed_1", "evaluate_seed")])
def test_rule_of_a_job_file(stem, rule):
    assert stage_times.rule_of(stem) == rule


def test_sums_per_rule(tmp_path):
    write(tmp_path, "decompose", 600.0, 1500.0, 1100.0)
    write(tmp_path, "decompose_variant_a", 120.0, 900.0, 200.0)
    write(tmp_path, "decompose_variant_b", 60.0, 1200.0, 100.0)
    jobs = stage_times.read_benchmarks(tmp_path)
    rules = stage_times.per_rule(jobs).set_index("rule")
    assert rules.loc["decompose_variant", "jobs"] == 2
    assert rules.loc["decompose_variant", "seconds"] == 180.0 and rules.loc["decompose_variant", "max_rss_mb"] == 1200.0
    assert rules.loc["decompose", "cpu_seconds"] == 1100.0
    text = stage_times.markdown(jobs, stage_times.per_rule(jobs))
    assert "| decompose_variant | 2 | 3.0 | 1,200 |" in text and "Sum of the jobs' wall times: 13.0 minutes" in text
