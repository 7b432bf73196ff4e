"""Config validation: every shipped config is valid, bad keys and types fail naming the key."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vpd.config import ConfigError, json_schema, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["config.yaml", "ci.yaml", "paper.yaml"]


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_are_valid(name):
    cfg = load_config(ROOT / "config" / name)
    assert cfg.target.model.vocab_size == cfg.tokenizer.vocab_size


def test_schema_file_is_generated_from_the_models():
    on_disk = json.loads((ROOT / "workflow/schemas/config.schema.json").read_text())
    assert on_disk == json_schema(), "run `python -m vpd schema > workflow/schemas/config.schema.json`"


def test_unknown_key_is_named():
    data = _load("ci.yaml")
    data["target"]["train"]["stepz"] = 3
    with pytest.raises(ConfigError, match=r"target\.train\.stepz"):
        parse_config(data)


def test_wrong_type_is_named():
    data = _load("ci.yaml")
    data["target"]["model"]["d_model"] = "wide"
    with pytest.raises(ConfigError, match=r"target\.model\.d_model"):
        parse_config(data)


def test_vocab_mismatch_between_sections():
    data = _load("ci.yaml")
    data["tokenizer"]["vocab_size"] = data["target"]["model"]["vocab_size"] + 1
    with pytest.raises(ConfigError, match="vocab_size"):
        parse_config(data)


def test_unpinned_package_source_rejected():
    data = _load("ci.yaml")
    src = copy.deepcopy(data["corpus"]["sources"][0])
    src.pop("sha256")
    data["corpus"]["sources"] = [src]
    with pytest.raises(ConfigError, match="sha256"):
        parse_config(data)


@pytest.mark.parametrize("bad", ["abc", "A" * 64, "0" * 63, "0" * 65, " " + "0" * 64])
def test_sha256_must_be_64_lowercase_hex_digits(bad):
    data = _load("ci.yaml")
    data["corpus"]["sources"][0]["sha256"] = bad
    with pytest.raises(ConfigError, match=r"corpus\.sources\.0\.sha256"):
        parse_config(data)


@pytest.mark.parametrize("key", [("decompose", "fused_kernels"), ("attribution", "pgd_persistent"),
                                 ("report", "execute_notebooks")])
@pytest.mark.parametrize("value", ["yes", "true", 1, 0])
def test_booleans_are_strict(key, value):
    data = _load("ci.yaml")
    data.setdefault(key[0], {})[key[1]] = value
    with pytest.raises(ConfigError, match=rf"{key[0]}\.{key[1]}"):
        parse_config(data)
    data[key[0]][key[1]] = True
    assert getattr(getattr(parse_config(data), key[0]), key[1]) is True


def test_the_default_compiles_its_long_decompositions_and_runs_the_short_sweeps_eagerly():
    """config/config.yaml: the main decomposition and the seeds' (4,000 steps) compile; the
    importance-coefficient, C-multiplier and adversary variants (500-600 steps) run eagerly."""
    from vpd.config import load_config
    from vpd.decomp.variants import variant_decompose_config
    from vpd.sweeps import variant_jobs
    from vpd.target.model import TargetLM

    cfg = load_config(ROOT / "config" / "config.yaml").model_copy(update={"seeds": [0, 1]})
    target = TargetLM(cfg.target.model)
    assert cfg.decompose.compiles
    compiles = {job.name: variant_decompose_config(cfg, job, target).compiles for job in variant_jobs(cfg)}
    assert compiles == {"coeff_0.001": False, "split_0.5x": False, "split_1x": False, "split_2x": False,
                        "split_4x": False, "seed_1": True, "split_1x_s1": False, "split_4x_s1": False,
                        "adversary_on": False, "adversary_off": False}


def test_heads_must_split_width():
    data = _load("ci.yaml")
    data["target"]["model"]["n_head"] = 3
    with pytest.raises(ConfigError, match="heads"):
        parse_config(data)


def _snakemake(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )


def test_snakemake_rejects_bad_key_when_building_the_dag(tmp_path):
    data = _load("ci.yaml")
    data["name"] = "bad-key-test"
    data["decompose"]["stepz"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    res = _snakemake("-n", "--configfile", str(bad), "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"))
    assert res.returncode != 0
    assert "stepz" in res.stdout + res.stderr


@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run_builds_full_dag(name, tmp_path):
    res = _snakemake("-n", "-p", "--configfile", str(ROOT / "config" / name), "--directory", str(tmp_path),
                     "--snakefile", str(ROOT / "Snakefile"))
    assert res.returncode == 0, res.stderr[-3000:]
    for rule in ["corpus", "tokenizer", "train_target", "decompose", "evaluate", "baselines", "feature_splitting"]:
        assert rule in res.stdout
    # one job per trained model of the sweeps, each under its own name
    from vpd.sweeps import seeded_transcoder_jobs, transcoder_jobs, variant_jobs

    cfg = parse_config(_load(name))
    blocks = res.stdout.split("\nrule ")
    transcoders = sorted(b.split("wildcards: transcoder=")[1].split()[0] for b in blocks if b.startswith("transcoder:"))
    variants = sorted(b.split("wildcards: variant=")[1].split()[0] for b in blocks if b.startswith("decompose_variant:"))
    seeded = [j.name for j in seeded_transcoder_jobs(cfg)]
    assert transcoders == sorted([j.name for j in transcoder_jobs(cfg)] + seeded)
    # per extra seed and kind: the largest dictionary (MMCS) and the two ends of the splitting ratio
    extra_seeds = len(set(cfg.seeds) - {cfg.seed})
    assert len(seeded) == len(cfg.baselines.kinds) * extra_seeds * 3
    assert variants == sorted(j.name for j in variant_jobs(cfg))
    assert len(transcoders) - len(seeded) == len(cfg.baselines.kinds) * len(cfg.baselines.n_latents) * len(cfg.baselines.k)
    assert len(variants) == (len(cfg.baselines.vpd_importance_coeffs) + len(cfg.feature_splitting.c_multipliers)
                             + 3 * extra_seeds + 2 * cfg.adversary_ablation.enabled)  # seed, 1x, largest x C
    # the training stages go through torchrun exactly when the config asks for several processes
    torchrun = "-m torch.distributed.run --standalone --nproc_per_node 8 -m vpd"
    shell = res.stdout
    if name == "paper.yaml":
        assert f"{torchrun} train_target" in shell and f"{torchrun} decompose" in shell
    else:
        assert "torch.distributed.run" not in shell and "-m vpd train_target" in shell


def test_config_readme_is_the_generated_reference_and_documents_every_key():
    from vpd.config_docs import render

    text = render()
    assert (ROOT / "config/README.md").read_text() == text, "run `python -m vpd config-docs > config/README.md`"
    undocumented = [row for row in text.splitlines() if row.startswith("| `") and row.rstrip().endswith("|  |")]
    assert not undocumented, undocumented


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dry_runs_write_nothing_under_results(tmp_path):
    """Building the DAG writes no file: neither on a fresh folder nor over an existing run's merged
    config, whatever `--config` overrides (a dry run during a real run changes nothing it reads)."""
    args = ("-n", "--configfile", str(ROOT / "config/ci.yaml"), "--directory", str(tmp_path),
            "--snakefile", str(ROOT / "Snakefile"))
    res = _snakemake(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (tmp_path / "results").exists()
    run = tmp_path / "results" / "ci"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text((ROOT / "config/ci.yaml").read_text())
    (run / "corpus").mkdir()
    (run / "corpus" / "stats.json").write_text("{}")
    before = _tree(tmp_path / "results")
    res = _snakemake(*args, "--config", "seed=7", "threads=1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resolved_config" in res.stdout  # the merged config is rewritten by a job, not by the DAG build
    assert _tree(tmp_path / "results") == before


def test_the_config_and_the_snakefile_imports_load_without_torch():
    """The DAG builds in a Python with pydantic and snakemake only: what the Snakefile imports
    (the config models and the YAML writer) must not pull torch in."""
    code = ("import sys, vpd.config, vpd.sweeps, vpd.analysis.graph_config, vpd.utils.io; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("name, cores, expected", [("ci.yaml", 4, 2), ("config.yaml", 4, 4), ("config.yaml", 2, 2)])
def test_each_job_declares_its_threads_and_passes_them_to_the_stage(name, cores, expected, tmp_path):
    """`threads` (per process) sizes each job; null takes every core. With the CI config's 2 threads
    under --cores 4, two of the independent post-decomposition stages fit side by side."""
    res = _snakemake("-n", "-p", "--configfile", str(ROOT / "config" / name), "--directory", str(tmp_path),
                     "--snakefile", str(ROOT / "Snakefile"), "--cores", str(cores))
    assert res.returncode == 0, res.stderr[-3000:]
    blocks = res.stdout.split("\nrule ")
    for rule in ("train_target", "decompose", "evaluate", "baselines", "harvest", "edit", "attribution", "attention"):
        (block,) = [b for b in blocks if b.startswith(f"{rule}:")]
        assert f"threads: {expected}" in block and f"-m vpd {rule} " in block and f"--threads {expected} " in block, rule
    for rule, stage in (("transcoder", "transcoder"), ("decompose_variant", "decompose")):
        jobs = [b for b in blocks if b.startswith(f"{rule}:")]
        assert jobs and all(f"threads: {expected}" in b and f"-m vpd {stage} " in b and f"--threads {expected} " in b
                            for b in jobs), rule


def test_cli_threads_are_the_jobs_cores_shared_by_its_processes(tmp_path, monkeypatch):
    from vpd import cli

    seen = []
    monkeypatch.setitem(cli.STAGES, "corpus", (lambda cfg, args: seen.append(cfg.threads), []))
    base = ["corpus", "--config", str(ROOT / "config/ci.yaml"), "--out", str(tmp_path)]
    assert cli.main(base + ["--threads", "3"]) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cli.main(base + ["--threads", "4"]) == 0
    assert cli.main(base) == 0  # without --threads: the config's value
    assert seen == [3, 2, 2]


def test_seeds_dry_run_lists_one_decomposition_and_one_evaluation_per_seed(tmp_path):
    # config/seeds.yaml is merged over config/config.yaml (the Snakefile's configfile, relative to the
    # working directory: named here because the test runs in tmp_path)
    res = _snakemake("-n", "-p", "--configfile", str(ROOT / "config" / "config.yaml"), str(ROOT / "config" / "seeds.yaml"),
                     "--directory", str(tmp_path),
                     "--snakefile", str(ROOT / "Snakefile"))
    assert res.returncode == 0, res.stderr[-3000:]
    blocks = res.stdout.split("\nrule ")
    seeds = yaml.safe_load((ROOT / "config" / "seeds.yaml").read_text())["seeds"]
    extra = sorted(f"seed_{s}" for s in seeds if s != _load("config.yaml")["seed"])
    decompositions = sorted(b.split("wildcards: variant=")[1].split()[0] for b in blocks
                            if b.startswith("decompose_variant:") and "variant=seed_" in b)
    evaluations = sorted(b.split("wildcards: variant=")[1].split()[0] for b in blocks if b.startswith("evaluate_seed:"))
    assert decompositions == evaluations == extra  # the seed equal to `seed` is the main decomposition
    assert sum(b.startswith("decompose:") for b in blocks) == sum(b.startswith("evaluate:") for b in blocks) == 1
    assert sum(b.startswith("seeds:") for b in blocks) == 1
    # and per kind and extra seed, the baselines sweep's largest dictionary (MMCS) and the splitting
    # grid's smallest and largest (splitting ratio)
    cfg, fs = _load("config.yaml")["baselines"], _load("config.yaml")["feature_splitting"]
    transcoders = sorted(b.split("wildcards: transcoder=")[1].split()[0] for b in blocks
                         if b.startswith("transcoder:") and "_s" in b.split("wildcards: transcoder=")[1].split()[0])
    assert transcoders == sorted([f"{kind}_L{max(cfg['n_latents'])}_k{max(cfg['k'])}_s{s}" for kind in cfg["kinds"]
                                  for s in seeds if s != 0]
                                 + [f"{kind}_L{n}_k{fs['k']}_s{s}" for kind in fs["kinds"]
                                    for n in (min(fs["n_latents"]), max(fs["n_latents"])) for s in seeds if s != 0])
    # and the ends of each feature-splitting ratio once more per extra seed
    split = sorted(b.split("wildcards: variant=")[1].split()[0] for b in blocks
                   if b.startswith("decompose_variant:") and "variant=split_" in b)
    assert split == sorted([f"split_{m:g}x" for m in _load("config.yaml")["feature_splitting"]["c_multipliers"]]
                           + [f"split_{m}x_s{s}" for m in (1, 4) for s in seeds if s != 0])
    for name in extra:
        assert f"--variant {name} --out results/default/variants/{name}" in res.stdout
        assert f"--decomposition results/default/variants/{name} --out results/default/variants/{name}/evaluation" in res.stdout


@pytest.mark.parametrize("seeds", [[3], [1, 1]])
def test_seeds_need_two_distinct_values(seeds):
    data = _load("ci.yaml")
    data["seeds"] = seeds
    with pytest.raises(ConfigError, match="seeds"):
        parse_config(data)


def test_adversary_variants_are_the_main_config_with_and_without_the_adversary():
    from vpd.decomp.variants import variant_decompose_config
    from vpd.sweeps import variant_jobs, variant_steps

    data = _load("config.yaml")
    cfg = parse_config(data)
    jobs = {j.name: j for j in variant_jobs(cfg) if j.purpose == "adversary"}
    assert sorted(jobs) == ["adversary_off", "adversary_on"]
    target = None  # only the splitting variants read the target's matrices
    on, off = (variant_decompose_config(cfg, jobs[n], target) for n in ("adversary_on", "adversary_off"))
    assert on.steps == off.steps == variant_steps(cfg, jobs["adversary_on"]) == data["adversary_ablation"]["steps"]
    assert on.coeffs.adversarial_recon == cfg.decompose.coeffs.adversarial_recon > 0
    assert off.coeffs.adversarial_recon == 0.0
    # everything else is the main decomposition's config
    same = {k: v for k, v in on.to_dict().items() if k != "steps"}
    assert same == {k: v for k, v in cfg.decompose.to_dict().items() if k != "steps"}
    assert {k: v for k, v in off.to_dict().items() if k not in ("steps", "coeffs")} == \
        {k: v for k, v in on.to_dict().items() if k not in ("steps", "coeffs")}
    # steps null: the main decomposition's length; disabled: no runs
    data["adversary_ablation"]["steps"] = None
    cfg = parse_config(data)
    assert all(variant_steps(cfg, j) == cfg.decompose.steps for j in variant_jobs(cfg) if j.purpose == "adversary")
    data["adversary_ablation"]["enabled"] = False
    assert not [j for j in variant_jobs(parse_config(data)) if j.purpose == "adversary"]


@pytest.mark.parametrize("values", [[], [0.5, 1.5], [-0.1]])
def test_source_values_must_lie_in_the_unit_interval(values):
    data = _load("ci.yaml")
    data["adversary_ablation"]["source_values"] = values
    with pytest.raises(ConfigError, match="source_values"):
        parse_config(data)


def test_seed_variants_are_the_main_decomposition_at_other_seeds():
    from vpd.sweeps import seed_runs, variant_jobs, variant_steps

    data = _load("ci.yaml")
    data["seeds"] = [data["seed"], 7]
    cfg = parse_config(data)
    assert seed_runs(cfg) == {data["seed"]: None, 7: "seed_7"}
    job = [j for j in variant_jobs(cfg) if j.purpose == "seed"]
    assert [(j.name, j.seed) for j in job] == [("seed_7", 7)]
    assert variant_steps(cfg, job[0]) == cfg.decompose.steps
