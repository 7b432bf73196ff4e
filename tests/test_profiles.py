"""Workflow profiles: they parse, name only existing rules, and cover every resource rules declare."""

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
