"""A decomposition SIGKILLed through Snakemake (once at a checkpoint, then at ten seeded random
moments) resumes from its last checkpoint when the rule is rerun, and ends with exactly the
components and metrics of an uninterrupted run (CPU, same seed)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vpd.utils import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("results/ci")
DECOMP = RESULTS / "decomposition"
COMPONENTS = DECOMP / "components.safetensors"
STEPS, CHECKPOINT_EVERY = 60, 5
KILL_AFTER_STEP = 15  # kill once a checkpoint at or past this step exists (a quarter of the run)
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made each
# step ~8x slower. It does not change any result.
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def write_config(path: Path) -> Path:
    """config/ci.yaml with a longer decomposition checkpointed often, so a kill lands mid-run."""
    data = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    data["target"]["train"].update(steps=20, eval_every=10)  # only an input here: keep it quick
    data["decompose"].update(steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, checkpoint_keep=2, eval_every=30)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def snakemake_cmd(workdir: Path, config: Path, *args: str) -> list[str]:
    # targets go before --configfile, which takes several values
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            str(COMPONENTS), "--configfile", str(config), "--cores", "2", *args]


def run(workdir: Path, config: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(snakemake_cmd(workdir, config, *args), capture_output=True, text=True, timeout=timeout, env=ENV)
    assert res.returncode == 0, (args, res.stdout[-3000:], res.stderr[-5000:])
    return res


def checkpoint_steps(workdir: Path) -> list[int]:
    root = workdir / DECOMP / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*")) if root.exists() else []


def copy_upstream(src: Path, dst: Path) -> None:
    """The corpus, tokenizer and target of run A, with their mtimes in DAG order (as if made here)."""
    (dst / RESULTS).mkdir(parents=True)
    shutil.copy2(src / RESULTS / "config.yaml", dst / RESULTS / "config.yaml")
    now = time.time() - 100
    for i, stage in enumerate(("corpus", "tokenizer", "target")):
        shutil.copytree(src / RESULTS / stage, dst / RESULTS / stage)
        for f in (dst / RESULTS / stage).rglob("*"):
            os.utime(f, (now + 10 * i, now + 10 * i))


def read_metrics(workdir: Path) -> list[dict]:
    lines = (workdir / DECOMP / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of `proc` (Snakemake and every job it started), if still alive."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_sigkilled_decomposition_resumes_to_identical_components(tmp_path):
    config = write_config(tmp_path / "faults.yaml")
    a, b = tmp_path / "a", tmp_path / "b"

    # A: uninterrupted, from scratch up to the decomposition.
    run(a, config)
    assert not any((a / DECOMP / "checkpoints").glob(".tmp-*"))

    # B: same upstream files, so only the decomposition is left to run.
    copy_upstream(a, b)
    plan = run(b, config, "-n")
    planned = plan.stdout + plan.stderr
    assert "rule decompose:" in planned and not any(
        f"rule {r}:" in planned for r in ("corpus", "tokenizer", "train_target")
    ), planned[-3000:]

    # Start it, wait for a checkpoint a quarter of the way in, SIGKILL snakemake and its children.
    proc = subprocess.Popen(snakemake_cmd(b, config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=ENV)
    deadline = time.monotonic() + 300
    try:
        while not (checkpoint_steps(b) and checkpoint_steps(b)[-1] >= KILL_AFTER_STEP):
            assert proc.poll() is None, "the decomposition ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.02)
    finally:
        kill_group(proc)  # if already gone, the assertion above says why
    killed_at = checkpoint_steps(b)
    assert not (b / COMPONENTS).exists() and killed_at[-1] < STEPS, killed_at

    # Rerun the rule: Snakemake's lock and the incomplete job are left behind by the kill.
    run(b, config, "--unlock")
    res = run(b, config, "--rerun-incomplete")
    log_text = (b / RESULTS / "logs/decompose.log").read_text() + res.stdout + res.stderr
    assert "resumed decomposition" in log_text, log_text[-3000:]
    resumed_at = int(log_text.split("resumed decomposition from")[1].split("at step")[1].split()[0])
    assert resumed_at == killed_at[-1], (killed_at, resumed_at)  # the newest checkpoint on disk

    # The resumed run's components and CI function equal the uninterrupted run's bit for bit.
    for name in ("components.safetensors", "ci_fn.safetensors"):
        ta, tb = load_file(str(a / DECOMP / name)), load_file(str(b / DECOMP / name))
        assert ta.keys() == tb.keys(), name
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not different, (name, different[:5])

    # The whole metrics log equals the uninterrupted run's: the records before the resume point
    # come back from the checkpoint (Snakemake deletes a rerun job's declared outputs, metrics.jsonl
    # included), those after it are recomputed identically.
    ma, mb = read_metrics(a), read_metrics(b)
    assert ma == mb, (len(ma), len(mb), resumed_at)


N_KILLS = 10


@pytest.mark.slow
def test_decomposition_killed_at_ten_random_points_ends_identical(tmp_path):
    """Ten SIGKILLs of Snakemake and its children at seeded random moments (after the checkpoint
    of a random step has appeared, plus a random delay: during startup, a step, a checkpoint
    write or the final outputs), each followed by `--unlock` and a rerun that is killed again; the
    last rerun ends with the components, CI function and metrics of an uninterrupted run."""
    config = write_config(tmp_path / "faults.yaml")
    a, b = tmp_path / "a", tmp_path / "b"
    run(a, config)
    copy_upstream(a, b)
    rng = random.Random(0)
    thresholds = sorted(rng.sample(range(0, STEPS, CHECKPOINT_EVERY), N_KILLS))
    mid_run = 0
    for threshold in thresholds:
        delay = rng.uniform(0.0, 0.3)
        proc = subprocess.Popen(snakemake_cmd(b, config, "--rerun-incomplete"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, env=ENV)
        deadline = time.monotonic() + 300
        try:
            while proc.poll() is None and not (checkpoint_steps(b) and checkpoint_steps(b)[-1] >= threshold):
                assert time.monotonic() < deadline, f"no checkpoint at step >= {threshold} in time"
                time.sleep(0.02)
            time.sleep(delay)
            mid_run += proc.poll() is None and not (b / COMPONENTS).exists()
        finally:
            kill_group(proc)
        run(b, config, "--unlock")
    assert mid_run >= N_KILLS // 2, f"only {mid_run} of {N_KILLS} kills landed before the decomposition finished"
    run(b, config, "--rerun-incomplete")
    for name in ("components.safetensors", "ci_fn.safetensors"):
        ta, tb = load_file(str(a / DECOMP / name)), load_file(str(b / DECOMP / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert read_metrics(a) == read_metrics(b)
    assert all(ckpt.verifies(p) for p in ckpt.list_checkpoints(b / DECOMP / "checkpoints"))
