"""The target training stage: one step learns, resume is bitwise exact, failures name their cause."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vpd.config import TargetTrainConfig, load_config, parse_config
from vpd.target import train as train_mod
from vpd.target.model import TargetLM
from vpd.stages.target import run_train_target
from vpd.target.train import build_optimizer, curve_steps, lm_loss, lr_at
from vpd.utils import checkpoint as ckpt
from project import write_tokenizer_files

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 300


def make_config(**train_overrides):
    data = yaml.safe_load((ROOT / "config" / "ci.yaml").read_text())
    data["precision"] = "fp32"
    data["tokenizer"]["vocab_size"] = VOCAB
    data["target"]["model"] = dict(n_layer=2, d_model=32, n_head=2, d_mlp=64, context=16, rope_base=10000.0, vocab_size=VOCAB)
    data["target"]["train"] = {
        **dict(steps=12, batch_size=4, lr=3e-3, warmup_steps=3, eval_every=4, eval_sequences=8, checkpoint_every=5),
        **train_overrides,
    }
    return parse_config(data, "test")


@pytest.fixture
def tokens_dir(tmp_path: Path) -> Path:
    """Tiny shards of a learnable sequence: a noisy repeating pattern over a 300-token vocabulary."""
    rng = np.random.default_rng(0)
    d = tmp_path / "tokens"
    d.mkdir()
    for name, n in (("train.bin", 6000), ("val.bin", 1200)):
        pattern = np.tile(np.arange(0, VOCAB, 7), n // 40 + 1)[:n]
        noise = rng.integers(0, VOCAB, n)
        tokens = np.where(rng.random(n) < 0.2, noise, pattern).astype(np.uint16)
        tokens.tofile(d / name)
    write_tokenizer_files(d, VOCAB)
    return d


def deterministic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


# ---------------------------------------------------------------- units
def test_lr_schedule():
    t = TargetTrainConfig(steps=100, batch_size=1, lr=1.0, min_lr_frac=0.1, warmup_steps=10)
    assert lr_at(0, t) == pytest.approx(0.1)
    assert lr_at(9, t) == pytest.approx(1.0)
    assert lr_at(10, t) == pytest.approx(1.0)
    assert lr_at(55, t) == pytest.approx(0.55)  # half-way through the cosine
    assert 0.1 < lr_at(99, t) < 0.101
    lrs = [lr_at(s, t) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_give_a_curve_of_at_least_50_points(name):
    """"Compute recovered" interpolates the curve: it must start at step 0 and be dense enough."""
    steps = curve_steps(load_config(ROOT / "config" / name).target.train)
    assert steps[0] == 0 and len(steps) >= 50


def test_weight_decay_only_on_matrices():
    cfg = make_config()
    model = TargetLM(cfg.target.model)
    opt = build_optimizer(model, cfg.target.train)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and len(decay["params"]) == 2 * 6 + 1
    assert all(p.dim() == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 2 * 2 + 1


def test_one_step_lowers_loss_on_fixed_batch():
    cfg = make_config(lr=1e-2, warmup_steps=0)
    torch.manual_seed(0)
    model = TargetLM(cfg.target.model)
    opt = build_optimizer(model, cfg.target.train)
    batch = torch.randint(0, VOCAB, (8, 17))
    cpu = torch.device("cpu")
    before = lm_loss(model, batch, cpu, torch.float32)
    assert before.item() == pytest.approx(math.log(VOCAB), abs=0.1)  # near-uniform at init
    before.backward()
    opt.step()
    after = lm_loss(model, batch, cpu, torch.float32)
    assert after.item() < before.item() - 0.05


def test_bf16_autocast_matches_fp32():
    """bf16 matmuls (fp32 master weights, fp32 logits and loss) agree with fp32 to 0.02 nats."""
    torch.manual_seed(0)
    cfg = make_config()
    model = TargetLM(cfg.target.model)
    batch = torch.randint(0, VOCAB, (8, 17))
    cpu = torch.device("cpu")
    with torch.no_grad():
        fp32 = lm_loss(model, batch, cpu, torch.float32).item()
        bf16 = lm_loss(model, batch, cpu, torch.bfloat16).item()
        assert model(batch[:, :-1]).dtype == torch.float32
    assert abs(fp32 - bf16) < 0.02
    assert model.wte.weight.dtype == torch.float32


# ---------------------------------------------------------------- the stage
def test_stage_outputs(tokens_dir, tmp_path):
    out = tmp_path / "target"
    run_train_target(make_config(), tokens_dir, out)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "curve.csv", "metrics.jsonl",
                 "final_config.yaml", "fig_target_curve.png", "fig_target_curve.pdf"):
        assert (out / name).exists(), name
    assert (out / "tokenizer.json").read_text() == (tokens_dir / "tokenizer.json").read_text()
    curve = pd.read_csv(out / "curve.csv")
    assert list(curve.columns) == ["step", "tokens", "flops", "val_ce"]
    assert curve["step"].tolist() == [0, 4, 8, 12]
    assert curve["tokens"].tolist() == [s * 4 * 16 for s in (0, 4, 8, 12)]
    model = TargetLM.from_pretrained(out)
    assert curve["flops"].tolist() == [t * model.flops_per_token() for t in curve["tokens"]]
    assert curve["val_ce"].iloc[-1] < curve["val_ce"].iloc[0] - 0.3  # it learned the pattern
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(13))
    assert {"lr", "loss", "grad_norm", "tokens_per_s"} <= metrics[1].keys()
    assert [m["val_ce"] for m in metrics if "val_ce" in m] == curve["val_ce"].tolist()
    final = yaml.safe_load((out / "final_config.yaml").read_text())
    assert final["seed"] == 0 and final["resolved_precision"] == "float32"
    assert final["target"]["model"]["d_model"] == 32


def test_stage_runs_in_bf16(tokens_dir, tmp_path):
    data = make_config(steps=4, eval_every=2).model_dump(mode="json")
    data["precision"] = "bf16"
    out = tmp_path / "target"
    run_train_target(parse_config(data), tokens_dir, out)
    curve = pd.read_csv(out / "curve.csv")
    assert curve["step"].tolist() == [0, 2, 4] and np.isfinite(curve["val_ce"]).all()
    assert yaml.safe_load((out / "final_config.yaml").read_text())["resolved_precision"] == "bfloat16"
    assert all(t.dtype == torch.float32 for t in weights(out).values())  # fp32 master weights


def test_same_seed_twice_is_identical(tokens_dir, tmp_path):
    cfg = make_config(steps=6, eval_every=3)
    run_train_target(cfg, tokens_dir, tmp_path / "a")
    run_train_target(cfg, tokens_dir, tmp_path / "b")
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "curve.csv").read_bytes() == (tmp_path / "b" / "curve.csv").read_bytes()


def test_resume_is_bitwise_identical(tokens_dir, tmp_path):
    cfg = make_config()  # 12 steps, checkpoints at 5, 10, 12
    run_train_target(cfg, tokens_dir, tmp_path / "full")
    # Interrupted after 7 updates: metrics has lines for steps 6-7 past the step-5 checkpoint.
    run_train_target(cfg, tokens_dir, tmp_path / "resumed", stop_after=7)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    assert read_metrics(tmp_path / "resumed" / "metrics.jsonl")[-1]["step"] == 7
    run_train_target(cfg, tokens_dir, tmp_path / "resumed")
    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert (tmp_path / "full" / "curve.csv").read_bytes() == (tmp_path / "resumed" / "curve.csv").read_bytes()
    assert deterministic(read_metrics(tmp_path / "full" / "metrics.jsonl")) == deterministic(
        read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    )


def test_checkpoint_keep_zero_keeps_every_checkpoint(tokens_dir, tmp_path):
    """12 steps with a checkpoint every 5 and at the end: steps 5, 10, 12; the default keeps the newest 2.
    A checkpoint's model tensors are the weights at its step, so the last one equals the saved model."""
    run_train_target(make_config(checkpoint_keep=0), tokens_dir, tmp_path / "all")
    run_train_target(make_config(), tokens_dir, tmp_path / "two")
    kept = {name: [p.name for p in ckpt.list_checkpoints(tmp_path / name / "checkpoints")] for name in ("all", "two")}
    assert kept == {"all": ["step-00000005", "step-00000010", "step-00000012"], "two": ["step-00000010", "step-00000012"]}
    tensors, _ = ckpt.load(tmp_path / "all" / "checkpoints" / "step-00000012")
    final = weights(tmp_path / "all")
    assert all(torch.equal(tensors[f"model.{k}"], v) for k, v in final.items())


def test_corrupt_latest_checkpoint_falls_back(tokens_dir, tmp_path, caplog):
    cfg = make_config(checkpoint_every=2)
    run_train_target(cfg, tokens_dir, tmp_path / "full")
    out = tmp_path / "resumed"
    run_train_target(cfg, tokens_dir, out, stop_after=7)  # checkpoints kept: step 4 and step 6
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert [p.name for p in ckpts] == ["step-00000004", "step-00000006"]
    tensor_file = ckpts[-1] / "tensors.safetensors"
    data = bytearray(tensor_file.read_bytes())
    data[-100:] = bytes(100)  # corrupt the newest checkpoint's tensors
    tensor_file.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="vpd"):
        run_train_target(cfg, tokens_dir, out)
    assert any("skipping invalid checkpoint" in r.message and "step-00000006" in r.message for r in caplog.records)
    assert any("resumed target training" in r.message and "step 4" in r.getMessage() for r in caplog.records)
    full, resumed = weights(tmp_path / "full"), weights(out)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_changed_config_starts_over_and_keeps_old_checkpoints(tokens_dir, tmp_path):
    out = tmp_path / "target"
    run_train_target(make_config(), tokens_dir, out, stop_after=6)
    # checkpoint_every does not change results, so it may change on resume: this resumes at step 5.
    run_train_target(make_config(checkpoint_every=3), tokens_dir, out, stop_after=8)
    assert not list(out.glob("checkpoints.stale-*"))
    old = [p.name for p in ckpt.list_checkpoints(out / "checkpoints")]
    # A different lr must not resume: the old checkpoints move aside and training starts over,
    # ending exactly where a fresh run with the new config ends.
    run_train_target(make_config(lr=1e-3), tokens_dir, out)
    (stale,) = out.glob("checkpoints.stale-*")
    assert [p.name for p in ckpt.list_checkpoints(stale)] == old
    run_train_target(make_config(lr=1e-3), tokens_dir, tmp_path / "fresh")
    new, fresh = weights(out), weights(tmp_path / "fresh")
    assert all(torch.equal(new[k], fresh[k]) for k in fresh)
    assert (out / "curve.csv").read_text() == (tmp_path / "fresh" / "curve.csv").read_text()


def test_vocab_mismatch_names_both_sources(tokens_dir, tmp_path):
    (tokens_dir / "meta.json").write_text(json.dumps({"vocab_size": 512}))
    with pytest.raises(ValueError, match=r"vocab_size 512 in .*meta\.json.*target\.model\.vocab_size 300"):
        run_train_target(make_config(), tokens_dir, tmp_path / "target")


def test_missing_input_names_the_file(tokens_dir, tmp_path):
    (tokens_dir / "val.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.bin"):
        run_train_target(make_config(), tokens_dir, tmp_path / "target")


def test_nan_loss_names_the_step_and_keeps_checkpoint(tokens_dir, tmp_path, monkeypatch):
    real_lr_at = train_mod.lr_at
    # An infinite learning rate at update 3 makes the weights non-finite; the loss of update 4 is NaN.
    monkeypatch.setattr(train_mod, "lr_at", lambda step, t: math.inf if step == 2 else real_lr_at(step, t))
    out = tmp_path / "target"
    with pytest.raises(train_mod.TrainingDivergedError, match=r"at step 4; last good checkpoint: .*step-00000002"):
        run_train_target(make_config(checkpoint_every=2), tokens_dir, out)
    assert [p.name for p in (out / "checkpoints").glob("step-*")] == ["step-00000002"]
    assert not (out / "model.safetensors").exists()


def test_world_size_without_torchrun_is_a_clear_error(tokens_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="target.train.world_size is 2 .*torchrun --standalone --nproc_per_node 2"):
        run_train_target(make_config(world_size=2), tokens_dir, tmp_path / "target")
    assert not (tmp_path / "target" / "checkpoints").exists()  # refused before any compute


def test_plot_target_curve():
    from vpd.plots.target import plot_target_curve

    curve = pd.DataFrame({"step": [0, 1, 2], "tokens": [0, 10, 20], "flops": [0, 100, 200], "val_ce": [5.0, 4.0, 3.5]})
    fig = plot_target_curve(curve)
    assert [ax.get_xscale() for ax in fig.axes] == ["log", "log"]
    assert len(fig.axes[0].lines[0].get_xdata()) == 2  # step 0 is the dashed reference line
