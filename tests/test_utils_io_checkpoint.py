"""Atomic outputs and checkpoints: interrupted writes leave nothing, corruption is detected, no pickle."""

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vpd.utils import checkpoint as ckpt
from vpd.utils.io import MetricsLog, atomic_path, write_text

ROOT = Path(__file__).resolve().parents[1]


def test_interrupted_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"], "temp file left behind"


def test_atomic_output_has_ordinary_permissions(tmp_path):
    write_text(tmp_path / "f.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_metrics_log_truncates_to_checkpoint_and_keeps_nan_valid(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(5):
        log.log({"step": step, "loss": float("nan") if step == 4 else step / 2})
    assert log.read()[4]["loss"] == "nan"
    log.truncate_after(2)
    assert [r["step"] for r in log.read()] == [0, 1, 2]


def _save(root, step, value):
    return ckpt.save(root, step, {"w": torch.full((3,), float(value))}, {"note": value}, keep=3)


def test_roundtrip_and_keep_newest(tmp_path):
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, step)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000020", "step-00000030", "step-00000040"]
    tensors, meta = ckpt.load_latest(tmp_path)
    assert meta["step"] == 40 and meta["note"] == 40 and torch.equal(tensors["w"], torch.full((3,), 40.0))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_meta"])
def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, damage, caplog):
    _save(tmp_path, 1, 1.0)
    latest = _save(tmp_path, 2, 2.0)
    tensor_file = latest / ckpt.TENSOR_FILE
    if damage == "truncate":
        tensor_file.write_bytes(tensor_file.read_bytes()[:20])
    elif damage == "flip":
        data = bytearray(tensor_file.read_bytes())
        data[-1] ^= 0xFF
        tensor_file.write_bytes(bytes(data))
    else:
        (latest / ckpt.META_FILE).unlink()
    tensors, meta = ckpt.load_latest(tmp_path)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(3))
    assert "skipping invalid checkpoint" in caplog.text


def test_no_valid_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    latest = _save(tmp_path, 1, 1.0)
    (latest / ckpt.TENSOR_FILE).write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="no valid checkpoint"):
        ckpt.load_latest(tmp_path)
    assert ckpt.load_latest(tmp_path / "absent") is None


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_planted_pickle_never_executes(tmp_path):
    """A pickle planted as a checkpoint's tensor file is rejected without being unpickled."""
    marker = tmp_path / "pwned"
    latest = _save(tmp_path / "ck", 1, 1.0)
    payload = pickle.dumps(_Exploit(marker))
    (latest / ckpt.TENSOR_FILE).write_bytes(payload)
    # Even with a matching checksum the file is parsed as safetensors, never unpickled.
    meta = ckpt.read_json(latest / ckpt.META_FILE)
    meta["sha256"] = ckpt.sha256_file(latest / ckpt.TENSOR_FILE)
    ckpt.write_json(latest / ckpt.META_FILE, meta)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(latest)
    assert not marker.exists()


def test_source_never_unpickles():
    offenders = []
    for path in (ROOT / "src").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "pickle.load" in line or ("torch.load(" in line and "weights_only=True" not in line):
                offenders.append(f"{path}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_optimizer_and_rng_state_roundtrip_exactly(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = ckpt.optimizer_state_to_flat(opt, "opt")
    rng_t, rng_m = ckpt.rng_state()
    ckpt.save(tmp_path, 1, {**tensors, **rng_t}, {"opt": meta, "rng": rng_m})
    expected = (torch.rand(3), np.random.rand(), random.random())

    loaded, lmeta = ckpt.load_latest(tmp_path)
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    ckpt.optimizer_state_from_flat(opt2, loaded, lmeta["opt"], "opt")
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    ckpt.set_rng_state(loaded, lmeta["rng"])
    again = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_set_aside_renames_and_never_overwrites(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.save(root, 3, {"w": torch.ones(2)}, {})
    first = ckpt.set_aside(root, "test")
    assert not root.exists() and first.name.startswith("checkpoints.stale-")
    assert [p.name for p in ckpt.list_checkpoints(first)] == ["step-00000003"]
    ckpt.save(root, 5, {"w": torch.zeros(2)}, {})
    second = ckpt.set_aside(root, "test")  # possibly within the same second: a distinct name
    assert second != first and first.exists()
    assert [p.name for p in ckpt.list_checkpoints(second)] == ["step-00000005"]


def test_directories_that_do_not_verify_are_neither_newest_nor_pruned(tmp_path, caplog):
    """A fake `step-00000099/` (no valid meta) sorts after the real checkpoints: it must not take one
    of the `keep` slots, must not be resumed, and is never deleted (kept for inspection)."""
    fake = tmp_path / "step-00000099"
    fake.mkdir(parents=True)
    (fake / "note.txt").write_text("not a checkpoint")
    mislabelled = _save(tmp_path / "other", 7, 7.0)  # a valid checkpoint moved under another step's name
    mislabelled.rename(tmp_path / "step-00000098")
    (tmp_path / "step-junk").mkdir()
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, step)  # keep=3
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["other", "step-00000020", "step-00000030", "step-00000040", "step-00000098", "step-00000099", "step-junk"]
    assert not ckpt.verifies(fake) and not ckpt.verifies(tmp_path / "step-00000098") and ckpt.verifies(tmp_path / "step-00000040")
    assert "step-junk" not in [p.name for p in ckpt.list_checkpoints(tmp_path)]
    _, meta = ckpt.load_latest(tmp_path)
    assert meta["step"] == 40
    assert "step-00000099" in caplog.text and "step-00000098" in caplog.text  # reported as skipped
