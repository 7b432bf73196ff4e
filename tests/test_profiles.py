"""Workflow profiles: they parse, name only existing rules, and cover every resource rules declare."""

import math
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _rules() -> set[str]:
    res = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules", "--configfile", "config/ci.yaml",
                          "--cores", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return {ln.strip() for ln in res.stdout.splitlines() if ln.strip()}


def _declared_resources() -> set[str]:
    keys = set()
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for block in re.findall(r"resources:\n((?:\s{8}\w+=.*\n)+)", smk.read_text()):
            keys |= set(re.findall(r"(\w+)=", block))
    return keys


def test_slurm_profile_parses_and_matches_the_rules():
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    defaults = profile["default-resources"]
    assert {"slurm_account", "slurm_partition", "runtime", "mem_mb"} <= set(defaults)
    rules = _rules()
    assert set(profile["set-resources"]) <= rules and set(profile["set-threads"]) <= rules
    # every resource the rules declare has a cluster default, so no job is submitted without it
    assert _declared_resources() <= set(defaults), _declared_resources() - set(defaults)


def test_every_rule_declares_resources_log_and_benchmark():
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        text = smk.read_text()
        for rule_text in re.split(r"\nrule ", text)[1:]:
            name = rule_text.split(":")[0]
            for directive in ("resources:", "log:", "benchmark:", "threads:"):
                assert directive in rule_text, f"{smk.name}: rule {name} lacks {directive}"


def test_no_site_settings_in_rules_or_code():
    for path in list((ROOT / "workflow/rules").glob("*.smk")) + list((ROOT / "src").rglob("*.py")):
        assert "slurm_" not in path.read_text(), path


def test_paper_scale_under_the_slurm_profile_plans_every_training_job_on_gpus():
    """`snakemake -n --configfile config/paper.yaml --workflow-profile workflow/profiles/slurm`:
    one job per transcoder and per VPD variant, each on the GPU partition with a runtime that
    covers its steps at the Snakefile's planning rate (1.25 x steps x seconds per step)."""
    import tempfile

    from vpd.config import load_config
    from vpd.sweeps import transcoder_jobs, variant_jobs, variant_steps

    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml",
                              "--workflow-profile", "workflow/profiles/slurm", "--directory", tmp,
                              "--snakefile", str(ROOT / "Snakefile")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    cfg = load_config(ROOT / "config/paper.yaml")
    jobs = {}
    for block in res.stdout.split("\nrule ")[1:]:
        rule = block.split(":")[0]
        wildcard = re.search(r"wildcards: \w+=(\S+)", block)
        resources = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"resources: (.*)", block).group(1)))
        jobs[(rule, wildcard.group(1) if wildcard else None)] = resources
    transcoders = {w: r for (rule, w), r in jobs.items() if rule == "transcoder"}
    variants = {w: r for (rule, w), r in jobs.items() if rule == "decompose_variant"}
    assert sorted(transcoders) == sorted(j.name for j in transcoder_jobs(cfg)) and len(transcoders) == 16
    assert sorted(variants) == sorted(j.name for j in variant_jobs(cfg)) and len(variants) == 8  # 2 coeff, 4 split, 2 adversary
    for name, r in transcoders.items():
        assert r["slurm_partition"] == "YOUR_GPU_PARTITION" and int(r["gpu"]) == 1, name
        assert int(r["runtime"]) == math.ceil(1.25 * cfg.baselines.train.steps * 0.1 / 60) == 105, name  # 50k steps
    by_name = {j.name: j for j in variant_jobs(cfg)}
    for name, r in variants.items():
        assert r["slurm_partition"] == "YOUR_GPU_PARTITION", name
        assert int(r["gpu"]) == int(r["processes"]) == cfg.decompose.world_size, name
        assert int(r["runtime"]) == math.ceil(1.25 * variant_steps(cfg, by_name[name]) * 1.5 / 60) == 12500, name  # 400k steps
    main = jobs[("decompose", None)]
    assert int(main["gpu"]) == cfg.decompose.world_size and int(main["runtime"]) == 12500


def test_snakemake_lint_is_clean():
    res = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--configfile", "config/ci.yaml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Lints for" not in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
