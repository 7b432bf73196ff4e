"""Provenance: a result is never resumed, reused or loaded against other inputs than its own."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from vpd.decomp import Decomposition, decompose
from vpd.utils import checkpoint as ckpt
from vpd.utils.errors import InputError
from vpd.utils.provenance import ProvenanceError, differences, flatten, module_digest, tensors_digest
from test_decomp_trainer import _one_thread, batches, cfg, tiny_target  # noqa: F401 (autouse fixture)
from test_target_train import make_config, tokens_dir, weights  # noqa: F401 (fixture)
from vpd.stages.target import run_train_target


# ---------------------------------------------------------------- digests
def test_digest_sees_one_changed_bit_dtype_and_name_but_not_order():
    a = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "y": torch.ones(2)}
    same = {"y": torch.ones(2), "x": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    assert tensors_digest(a) == tensors_digest(same)
    flipped = {**a, "y": torch.tensor([1.0, np.nextafter(np.float32(1), np.float32(2))])}  # one ulp
    assert tensors_digest(flipped) != tensors_digest(a)
    assert tensors_digest({**a, "y": torch.ones(2, dtype=torch.float64)}) != tensors_digest(a)
    assert tensors_digest({"x": a["x"], "z": a["y"]}) != tensors_digest(a)
    assert tensors_digest({"x": a["x"].reshape(3, 2), "y": a["y"]}) != tensors_digest(a)  # same bytes, other shape
    assert len(tensors_digest({"b": torch.ones(3, dtype=torch.bfloat16)})) == 64


def test_differences_name_both_values_of_nested_keys():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    assert differences({"a": {"b": 1}, "s": "x"}, {"a": {"b": 2}, "s": "x", "new": 5}) == [
        "a.b: recorded 1, now 2", "new: recorded None, now 5"]
    assert differences(None, {}) == []


# ---------------------------------------------------------------- decomposition
def perturbed_target():
    t = tiny_target()
    with torch.no_grad():
        t.h[0].mlp.down_proj.weight[0, 0] += 1e-3
    return t


def test_resume_against_another_target_sets_checkpoints_aside(tmp_path, caplog):
    """The same config and seed on a target with one weight changed must not resume: the old
    checkpoints move aside, naming both digests, and the result equals a fresh run on the new target."""
    run = tmp_path / "run"
    decompose(tiny_target(), batches, cfg(), seed=1, out_dir=run, progress=False)
    old_digest, new_digest = module_digest(tiny_target()), module_digest(perturbed_target())
    assert old_digest != new_digest
    with caplog.at_level(logging.WARNING, logger="vpd"):
        rerun = decompose(perturbed_target(), batches, cfg(), seed=1, out_dir=run, progress=False)
    (stale,) = run.glob("checkpoints.stale-*")
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"target_sha256: recorded {old_digest}, now {new_digest}" in message
    assert ckpt.list_checkpoints(stale)
    fresh = decompose(perturbed_target(), batches, cfg(), seed=1, out_dir=tmp_path / "fresh", progress=False)
    assert all(torch.equal(rerun.components(n)[0], fresh.components(n)[0]) for n in fresh.names)


@pytest.mark.parametrize("change", [dict(seed=2), dict(dtype=torch.bfloat16), dict(inputs={"train_tokens_sha256": "b" * 64})])
def test_resume_under_another_seed_dtype_or_data_sets_checkpoints_aside(tmp_path, change):
    run = tmp_path / "run"
    base = dict(seed=1, dtype=torch.float32, inputs={"train_tokens_sha256": "a" * 64})
    decompose(tiny_target(), batches, cfg(), out_dir=run, progress=False, **base)
    decompose(tiny_target(), batches, cfg(), out_dir=run, progress=False, **{**base, **change})
    assert len(list(run.glob("checkpoints.stale-*"))) == 1
    decompose(tiny_target(), batches, cfg(), out_dir=run, progress=False, **{**base, **change})  # now resumes
    assert len(list(run.glob("checkpoints.stale-*"))) == 1


def test_load_refuses_another_target_unless_allowed(tmp_path, caplog):
    dec = decompose(tiny_target(), batches, cfg(), seed=1, progress=False, inputs={"train_tokens_sha256": "c" * 64})
    dec.save(tmp_path)
    recorded = json.loads((tmp_path / "decomposition.json").read_text())["provenance"]
    assert recorded == {"target_sha256": module_digest(tiny_target()), "seed": 1, "dtype": "float32",
                        "train_tokens_sha256": "c" * 64}
    assert Decomposition.load(tmp_path, tiny_target()).provenance == recorded
    with pytest.raises(ProvenanceError, match=f"recorded {recorded['target_sha256']}, now {module_digest(perturbed_target())}"):
        Decomposition.load(tmp_path, perturbed_target())
    with caplog.at_level(logging.WARNING, logger="vpd"):
        loaded = Decomposition.load(tmp_path, perturbed_target(), allow_mismatch=True)
    assert "another target" in caplog.text
    assert all(torch.equal(loaded.components(n)[1], dec.components(n)[1]) for n in dec.names)


def test_load_refuses_a_decomposition_without_provenance(tmp_path):
    Decomposition(tiny_target(), cfg()).save(tmp_path)
    meta = json.loads((tmp_path / "decomposition.json").read_text())
    del meta["provenance"]
    (tmp_path / "decomposition.json").write_text(json.dumps(meta))
    with pytest.raises(ProvenanceError, match="recorded None"):
        Decomposition.load(tmp_path, tiny_target())


# ---------------------------------------------------------------- target training
def test_target_resume_after_the_token_shards_change_starts_over(tokens_dir, tmp_path):
    out = tmp_path / "target"
    run_train_target(make_config(), tokens_dir, out, stop_after=6)
    train = np.fromfile(tokens_dir / "train.bin", dtype=np.uint16)
    train[:100] = (train[:100] + 1) % 300
    train.tofile(tokens_dir / "train.bin")
    run_train_target(make_config(), tokens_dir, out)
    assert len(list(out.glob("checkpoints.stale-*"))) == 1
    run_train_target(make_config(), tokens_dir, tmp_path / "fresh")
    new, fresh = weights(out), weights(tmp_path / "fresh")
    assert all(torch.equal(new[k], fresh[k]) for k in fresh)


def test_target_records_its_input_digests(tokens_dir, tmp_path):
    import yaml

    from vpd.utils.io import sha256_file

    run_train_target(make_config(), tokens_dir, tmp_path / "target")
    inputs = yaml.safe_load((tmp_path / "target" / "final_config.yaml").read_text())["inputs"]
    assert inputs == {f"{n}_sha256": sha256_file(tokens_dir / n) for n in ("tokenizer.json", "train.bin", "val.bin")}


def test_tokenizer_or_shard_changed_since_the_tokenizer_stage_is_refused(tokens_dir, tmp_path):
    from vpd.utils.io import sha256_file

    meta = json.loads((tokens_dir / "meta.json").read_text())
    meta["tokenizer_sha256"] = sha256_file(tokens_dir / "tokenizer.json")
    meta["shard_sha256"] = {s: sha256_file(tokens_dir / f"{s}.bin") for s in ("train", "val")}
    (tokens_dir / "meta.json").write_text(json.dumps(meta))
    text = (tokens_dir / "tokenizer.json").read_text()
    (tokens_dir / "tokenizer.json").write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(InputError, match=r"tokenizer\.json does not match the sha256 recorded in .*meta\.json"):
        run_train_target(make_config(), tokens_dir, tmp_path / "target")
    assert not (tmp_path / "target").exists()  # refused before any compute


def test_unreadable_tokenizer_names_the_file(tokens_dir, tmp_path):
    from vpd.data.tokenizer import TokenizerError

    text = (tokens_dir / "tokenizer.json").read_text()
    (tokens_dir / "tokenizer.json").write_text(text[: len(text) // 2])  # no sha recorded: the parse fails
    with pytest.raises(TokenizerError, match=r"tokenizer .*tokenizer\.json cannot be read"):
        run_train_target(make_config(), tokens_dir, tmp_path / "target")


def test_upstream_digests_hash_the_files_a_stage_read(tmp_path):
    import hashlib

    from vpd.utils.provenance import upstream_digests

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "t" / "other.txt").write_text("not read")
    assert upstream_digests(target=tmp_path / "t") == {"target/model.safetensors": hashlib.sha256(b"weights").hexdigest()}


def test_source_commit_names_head_and_dirty_trees(tmp_path):
    import subprocess

    from vpd.utils.provenance import source_commit

    assert source_commit(tmp_path) == "unknown"  # not a git checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (tmp_path / "f.txt").write_text("a")
    (tmp_path / "results" / "default" / "paper").mkdir(parents=True)
    (tmp_path / "results" / "default" / "paper" / "README.md").write_text("committed report")
    subprocess.run(git + ["add", "f.txt", "results"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert source_commit(tmp_path) == head
    (tmp_path / "new.txt").write_text("untracked files do not count")
    assert source_commit(tmp_path) == head
    (tmp_path / "results" / "default" / "paper" / "README.md").write_text("a run re-rendered the report")
    assert source_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("b")
    assert source_commit(tmp_path) == head + "+dirty"


def test_config_digest_ignores_key_order_and_sees_values():
    from vpd.utils.provenance import config_digest

    assert config_digest({"a": 1, "b": {"c": 2}}) == config_digest({"b": {"c": 2}, "a": 1})
    assert config_digest({"a": 1}) != config_digest({"a": 2})
    assert len(config_digest({})) == 16
