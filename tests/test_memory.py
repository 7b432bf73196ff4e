"""Memory estimates of the training stages: exact parameter parts, linear activation parts, per-rank
batches, and the up-front refusal (also from inside both stages, before any compute)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from vpd.config import load_config
from vpd.decomp.ci_functions import build_ci_function
from vpd.decomp.components import match_matrices
from vpd.decomp.memory import estimate_decomposition_bytes
from vpd.target.memory import estimate_target_training_bytes
from vpd.target.model import TargetLM
from vpd.utils import memory
from vpd.utils.memory import (
    SKIP_ENV,
    MemoryEstimate,
    MemoryEstimateError,
    available_memory_bytes,
    check_memory,
)
from project import write_tokenizer_files

ROOT = Path(__file__).resolve().parents[1]
GB, GIB = 10**9, 2**30
# Peak RSS at config/config.yaml's decompose shape, read as GiB (the larger reading): fp32 from the
# decomposition benchmark with fused kernels (benchmarks/RESULTS.md, 2026-12-01: 1.47 GB), bf16 from
# the default run's decompose stage (Snakemake benchmark max_rss 1,582 MB, 2026-12-01), which also
# holds the eval batch and the compiled graphs.
MEASURED_DEFAULT_DECOMP_RSS = {"fp32": 1.47 * GIB, "bf16": 1.55 * GIB}
# Peak RSS of 3 target training steps at config/config.yaml's target shape, bf16 (measured for memory.py).
MEASURED_DEFAULT_TARGET_RSS = 752 * 2**20


@pytest.fixture(scope="module")
def ci_cfg():
    return load_config(ROOT / "config/ci.yaml")


@pytest.fixture(autouse=True)
def _no_skip(monkeypatch):
    monkeypatch.delenv(SKIP_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def meta_counts(cfg) -> tuple[int, int, int, int]:
    """(target params, trainable decomposition params, ΣC, matrices), counted on the meta device."""
    with torch.device("meta"):
        target = TargetLM(cfg.target.model)
    C = match_matrices(target, cfg.decompose.matrices)
    mods = dict(target.named_modules())
    d_in = {n: mods[n].in_features for n in C}
    with torch.device("meta"):
        ci_fn = build_ci_function(d_in, C, cfg.decompose.ci_fn)
    comps = sum(c * (mods[n].in_features + mods[n].out_features) for n, c in C.items())
    n_target = sum(p.numel() for p in target.parameters())
    return n_target, comps + sum(p.numel() for p in ci_fn.parameters()), sum(C.values()), len(C)


def with_batch(section, batch_size: int, world_size: int = 1):
    return section.model_copy(update={"batch_size": batch_size, "world_size": world_size})


# ---------------------------------------------------------------- estimates
def test_parameter_parts_are_16_bytes_per_trained_parameter(ci_cfg):
    n_target, n_trained, _, _ = meta_counts(ci_cfg)
    t = estimate_target_training_bytes(ci_cfg.target.model, ci_cfg.target.train)
    assert t.parts["parameters"] + t.parts["gradients"] + t.parts["adamw_moments"] == 16 * n_target
    d = estimate_decomposition_bytes(ci_cfg.target.model, ci_cfg.decompose)
    assert d.parts["parameters"] + d.parts["gradients"] + d.parts["adamw_moments"] == 16 * n_trained
    assert d.parts["target_weights"] == 4 * n_target  # frozen: no gradient, no moments
    assert t.total == sum(t.parts.values()) and d.total == sum(d.parts.values())


def test_decomposition_parameters_match_a_real_decomposition(ci_cfg):
    from vpd.decomp.api import Decomposition

    dec = Decomposition(TargetLM(ci_cfg.target.model), ci_cfg.decompose)
    d = estimate_decomposition_bytes(ci_cfg.target.model, ci_cfg.decompose)
    assert d.parts["parameters"] == 4 * sum(p.numel() for p in dec.parameters())


def test_adversary_part_is_sources_and_two_moments_per_local_position(ci_cfg):
    _, _, total_c, n_mats = meta_counts(ci_cfg)
    dcfg = ci_cfg.decompose
    T = dcfg.seq_len or ci_cfg.target.model.context
    d = estimate_decomposition_bytes(ci_cfg.target.model, dcfg)
    assert d.parts["adversary_sources"] == 3 * 4 * dcfg.batch_size * T * (total_c + n_mats)
    off = dcfg.model_copy(update={"coeffs": dcfg.coeffs.model_copy(update={"adversarial_recon": 0.0})})
    assert "adversary_sources" not in estimate_decomposition_bytes(ci_cfg.target.model, off).parts


def test_token_parts_are_linear_in_local_batch_tokens(ci_cfg):
    model, dcfg, tcfg = ci_cfg.target.model, ci_cfg.decompose, ci_cfg.target.train
    d1 = estimate_decomposition_bytes(model, with_batch(dcfg, 4))
    d2 = estimate_decomposition_bytes(model, with_batch(dcfg, 8))
    for part in ("activations", "flat_ci_masks", "adversary_sources"):
        assert d2.parts[part] == pytest.approx(2 * d1.parts[part], abs=2), part
    for part in ("parameters", "target_weights", "runtime"):
        assert d2.parts[part] == d1.parts[part], part
    t1 = estimate_target_training_bytes(model, with_batch(tcfg, 4))
    t2 = estimate_target_training_bytes(model, with_batch(tcfg, 12))
    assert t2.parts["activations"] == pytest.approx(3 * t1.parts["activations"], abs=3)
    assert t2.parts["parameters"] == t1.parts["parameters"]


def test_flat_part_is_linear_in_total_C(ci_cfg):
    model, dcfg = ci_cfg.target.model, ci_cfg.decompose
    doubled = dcfg.model_copy(update={"matrices": [m.model_copy(update={"C": 2 * m.C}) for m in dcfg.matrices]})
    a, b = estimate_decomposition_bytes(model, dcfg), estimate_decomposition_bytes(model, doubled)
    assert b.parts["flat_ci_masks"] == pytest.approx(2 * a.parts["flat_ci_masks"], abs=2)
    assert b.parts["activations"] == a.parts["activations"]  # per-token widths other than ΣC are unchanged


def test_world_size_splits_the_batch_over_ranks(ci_cfg):
    model, dcfg, tcfg = ci_cfg.target.model, ci_cfg.decompose, ci_cfg.target.train
    two_ranks = estimate_decomposition_bytes(model, with_batch(dcfg, 8, world_size=2))
    assert two_ranks.parts == estimate_decomposition_bytes(model, with_batch(dcfg, 4)).parts
    assert two_ranks.parts == estimate_decomposition_bytes(model, with_batch(dcfg, 8), world_size=2).parts
    assert estimate_target_training_bytes(model, with_batch(tcfg, 16, 2)).parts == (
        estimate_target_training_bytes(model, with_batch(tcfg, 8)).parts
    )


def test_runtime_part_only_on_cpu(ci_cfg):
    cpu = estimate_decomposition_bytes(ci_cfg.target.model, ci_cfg.decompose, device="cpu")
    cuda = estimate_decomposition_bytes(ci_cfg.target.model, ci_cfg.decompose, device="cuda")
    assert cpu.total - cuda.total == cpu.parts["runtime"] > 0 and "runtime" not in cuda.parts


def test_default_config_estimate_is_an_upper_bound_within_2x_of_measured_peak_rss():
    cfg = load_config(ROOT / "config/config.yaml")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        est = estimate_decomposition_bytes(cfg.target.model, cfg.decompose, dtype=dtype)
        measured = MEASURED_DEFAULT_DECOMP_RSS[name]
        print(f"config.yaml decompose ({name}): {est.format()}; measured peak RSS {measured / GB:.2f} GB")
        assert measured <= est.total <= 2 * measured
    est = estimate_target_training_bytes(cfg.target.model, cfg.target.train)
    print(f"config.yaml train_target: {est.format()}; measured peak RSS {MEASURED_DEFAULT_TARGET_RSS / GB:.2f} GB")
    assert MEASURED_DEFAULT_TARGET_RSS <= est.total <= 2 * MEASURED_DEFAULT_TARGET_RSS


def test_paper_config_estimate_is_plausible():
    cfg = load_config(ROOT / "config/paper.yaml")
    dec = estimate_decomposition_bytes(cfg.target.model, cfg.decompose, device="cuda", dtype=torch.bfloat16)
    tgt = estimate_target_training_bytes(cfg.target.model, cfg.target.train, device="cuda")
    print(f"paper.yaml decompose: {dec.format()}\npaper.yaml train_target: {tgt.format()}")
    _, n_trained, total_c, _ = meta_counts(cfg)
    assert total_c == 38_912 and n_trained > 539e6  # CI transformer + components
    # 8 ranks: 8 x 512 tokens each; the flat [tokens, ΣC] fp32 tensors alone are 0.64 GB apiece
    assert dec.parts["flat_ci_masks"] > 10 * 4 * 8 * 512 * total_c
    for est in (dec, tgt):
        assert 10 * GB < est.total < 80 * GB  # per rank: needs a big accelerator, fits an 80 GB one


def test_format_is_one_line_with_units():
    text = MemoryEstimate({"parameters": 3 * GB, "activations": 250 * 10**6, "tiny": 1234}, "note").format()
    assert "\n" not in text and text.startswith("3.25 GB per process")
    assert "parameters 3.00 GB" in text and "activations 250 MB" in text and "[note]" in text


# ---------------------------------------------------------------- available memory
def test_available_memory_is_positive_and_below_physical():
    avail = available_memory_bytes("cpu")
    import os

    assert 0 < avail <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_cgroup_limit_caps_available_memory(tmp_path, monkeypatch, version):
    mem = tmp_path if version == "v2" else tmp_path / "memory"
    mem.mkdir(exist_ok=True)
    names = ("memory.max", "memory.current", "inactive_file") if version == "v2" else (
        "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    (mem / names[0]).write_text(f"{4 * GB}\n")
    (mem / names[1]).write_text(f"{3 * GB}\n")
    (mem / "memory.stat").write_text(f"anon 123\n{names[2]} {GB}\n")
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 100 * GB)
    assert available_memory_bytes("cpu") == 4 * GB - (3 * GB - GB)  # limit - (usage - reclaimable cache)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: GB)
    assert available_memory_bytes("cpu") == GB  # the smaller of the two
    (mem / names[0]).write_text("max\n" if version == "v2" else "9223372036854771712\n")  # no limit
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 100 * GB)
    assert available_memory_bytes("cpu") == 100 * GB


def test_meminfo_is_read_in_bytes(tmp_path, monkeypatch):
    (tmp_path / "meminfo").write_text("MemTotal: 2048 kB\nMemFree: 1024 kB\nMemAvailable: 1536 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "meminfo")
    assert memory._meminfo_available() == 1536 * 1024


# ---------------------------------------------------------------- the check
KEYS = "decompose.batch_size, the C values of decompose.matrices"


def test_check_memory_refuses_naming_the_keys(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 2 * GB)
    est = MemoryEstimate({"activations": 3 * GB})
    with pytest.raises(MemoryEstimateError) as info:
        check_memory(est, "cpu", what="decompose", keys=KEYS)
    msg = str(info.value)
    assert "decompose" in msg and KEYS in msg and SKIP_ENV in msg and "3.00 GB" in msg and "2.00 GB" in msg
    with pytest.raises(MemoryEstimateError):  # within the budget but above 90% of it
        check_memory(MemoryEstimate({"activations": int(1.9 * GB)}), "cpu", what="decompose", keys=KEYS)


def test_check_memory_passes_and_logs_the_estimate(monkeypatch, caplog):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 100 * GB)
    est = MemoryEstimate({"parameters": GB, "activations": 2 * GB})
    with caplog.at_level(logging.INFO, logger="vpd"):
        assert check_memory(est, "cpu", what="train_target", keys=KEYS) == 100 * GB
    assert "train_target memory estimate: 3.00 GB per process" in caplog.text


def test_skip_env_turns_the_refusal_into_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 10**6)
    monkeypatch.setenv(SKIP_ENV, "1")
    with caplog.at_level(logging.INFO, logger="vpd"):
        check_memory(MemoryEstimate({"activations": GB}), "cpu", what="decompose", keys=KEYS)
    assert any(r.levelno == logging.WARNING and KEYS in r.getMessage() for r in caplog.records)


def test_processes_sharing_a_cpu_host_are_counted_together(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 10 * GB)
    est = MemoryEstimate({"activations": 3 * GB})
    check_memory(est, "cpu", what="decompose", keys=KEYS)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(MemoryEstimateError, match="4 processes"):
        check_memory(est, "cpu", what="decompose", keys=KEYS)


# ---------------------------------------------------------------- the stages refuse before any compute
@pytest.fixture
def tiny_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 10**6)


def test_decompose_stage_refuses_before_compute(ci_cfg, tmp_path, tiny_memory, monkeypatch):
    from vpd.stages import decompose as stage

    TargetLM(ci_cfg.target.model).save_pretrained(tmp_path / "target")
    monkeypatch.setattr(stage, "decompose", lambda *a, **k: pytest.fail("decompose() ran"))
    with pytest.raises(MemoryEstimateError, match="decompose.batch_size"):
        stage.run_decompose(ci_cfg, tmp_path / "target", tmp_path / "no_tokens", tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "out" / "metrics.jsonl").exists()


def test_train_target_stage_refuses_before_compute(ci_cfg, tmp_path, tiny_memory, monkeypatch):
    from vpd.stages import target as stage

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    for name in stage.INPUT_FILES:
        (tokens / name).write_bytes(b"")
    write_tokenizer_files(tokens, 300)  # the input check parses tokenizer.json
    (tokens / "meta.json").write_text(json.dumps({"vocab_size": ci_cfg.target.model.vocab_size}))
    monkeypatch.setattr(stage, "train_target", lambda *a, **k: pytest.fail("train_target() ran"))
    with pytest.raises(MemoryEstimateError, match="target.train.batch_size"):
        stage.run_train_target(ci_cfg, tokens, tmp_path / "out")
    assert not (tmp_path / "out").exists()
