"""Trainer: determinism, resume equality, NaN stop, bf16/fp32 agreement, the decompose stage."""

import math

import numpy as np
import pytest
import torch

from vpd.config import TargetModelConfig
from vpd.decomp import Decomposition, DecompositionConfig, decompose
from vpd.decomp.trainer import NonFiniteLossError, Trainer
from vpd.target.model import TargetLM
from vpd.utils import checkpoint as ckpt


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: tests stay fast when other jobs share the cores (OpenMP spin-waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_target():
    torch.manual_seed(0)
    return TargetLM(TargetModelConfig(n_layer=2, d_model=16, n_head=2, d_mlp=32, context=8, vocab_size=300))


def cfg(**kw):
    d = dict(matrices=[{"pattern": "h.*.attn.*", "C": 8}, {"pattern": "h.*.mlp.*", "C": 12}],
             ci_fn=dict(d_model=16, n_blocks=1, n_heads=2, d_mlp=32), steps=6, batch_size=2, seq_len=8,
             lr=3e-3, faithfulness_warmup_steps=5, eval_every=3, log_every=1, checkpoint_every=2,
             pgd=dict(eval_steps=2, warmup_frac=0.5))
    d.update(kw)
    return DecompositionConfig.from_dict(d)


def batches(g):
    return torch.randint(0, 300, (2, 8), generator=g)


def test_same_seed_same_metrics(tmp_path):
    decompose(tiny_target(), batches, cfg(), seed=3, out_dir=tmp_path / "a", progress=False)
    decompose(tiny_target(), batches, cfg(), seed=3, out_dir=tmp_path / "b", progress=False)
    a = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert a == (tmp_path / "b" / "metrics.jsonl").read_text()
    assert a.count('"phase": "train"') == 6 and a.count('"phase": "eval"') == 3
    decompose(tiny_target(), batches, cfg(), seed=4, out_dir=tmp_path / "c", progress=False)
    assert a != (tmp_path / "c" / "metrics.jsonl").read_text()


def test_resumed_run_equals_uninterrupted(tmp_path):
    full = decompose(tiny_target(), batches, cfg(), seed=1, out_dir=tmp_path / "full", progress=False)

    calls = {"n": 0}

    def dying(g):
        calls["n"] += 1
        if calls["n"] == 6:  # the process "dies" while fetching the 6th batch (after checkpoint 4)
            raise KeyboardInterrupt
        return batches(g)

    with pytest.raises(KeyboardInterrupt):
        decompose(tiny_target(), dying, cfg(), seed=1, out_dir=tmp_path / "resumed", progress=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "resumed" / "checkpoints")] == ["step-00000002", "step-00000004"]
    resumed = decompose(tiny_target(), batches, cfg(), seed=1, out_dir=tmp_path / "resumed", progress=False)
    for n in full.names:
        assert torch.equal(full.components(n)[0], resumed.components(n)[0])
        assert torch.equal(full.components(n)[1], resumed.components(n)[1])
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == (tmp_path / "resumed" / "metrics.jsonl").read_text()


def test_nan_stops_naming_step_and_loss(tmp_path):
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 3)
            self.b = torch.nn.Linear(3, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    calls = {"n": 0}

    def data(g):
        calls["n"] += 1
        x = torch.rand(8, 4, generator=g)
        return x * float("nan") if calls["n"] == 5 else x  # call 1 is the eval batch

    c = cfg(matrices=[{"pattern": "*", "C": 4}], ci_fn=dict(kind="per_matrix_mlp", hidden=[8]), output_loss="mse",
            batch_size=8, seq_len=None)
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss 'importance_minimality' is nan"):
        decompose(Toy(), data, c, out_dir=tmp_path, progress=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]


def test_changed_config_sets_checkpoints_aside_and_starts_over(tmp_path):
    """A rerun under another config never resumes the old checkpoints: they are moved to
    `checkpoints.stale-*` (kept) and the run equals a fresh run of the new config."""
    decompose(tiny_target(), batches, cfg(), seed=1, out_dir=tmp_path / "run", progress=False)
    old = [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")]
    changed = cfg(coeffs=dict(importance_minimality=1e-3))
    rerun = decompose(tiny_target(), batches, changed, seed=1, out_dir=tmp_path / "run", progress=False)
    (stale,) = (tmp_path / "run").glob("checkpoints.stale-*")
    assert [p.name for p in ckpt.list_checkpoints(stale)] == old
    fresh = decompose(tiny_target(), batches, changed, seed=1, out_dir=tmp_path / "fresh", progress=False)
    assert all(torch.equal(rerun.components(n)[1], fresh.components(n)[1]) for n in fresh.names)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (tmp_path / "fresh" / "metrics.jsonl").read_text()


def test_bf16_and_fp32_losses_agree():
    """One step from identical state: every loss within 3% relative (+1e-4 absolute) in bf16."""
    values = {}
    for dtype in (torch.float32, torch.bfloat16):
        dec = Decomposition(tiny_target(), cfg(steps=50, faithfulness_warmup_steps=50), seed=0, dtype=dtype)
        tr = Trainer(dec, batches, seed=0, progress=False)
        tr.faithfulness_warmup()
        values[dtype] = tr.train_step(0, batches(torch.Generator().manual_seed(0)))
    f32, b16 = values[torch.float32], values[torch.bfloat16]
    for k in ("faithfulness", "importance_minimality", "stochastic_recon", "adversarial_recon", "total", "l0_total"):
        assert math.isfinite(b16[k])
        assert abs(b16[k] - f32[k]) <= 0.03 * abs(f32[k]) + 1e-4, (k, f32[k], b16[k])
    assert b16["faithfulness"] == f32["faithfulness"]  # Δ-L2 is always fp32


def test_stage_writes_all_outputs(tmp_path):
    import yaml

    from vpd.config import parse_config
    from vpd.stages.decompose import run_decompose

    d = yaml.safe_load(open("config/ci.yaml"))
    d["decompose"].update(steps=4, faithfulness_warmup_steps=3, eval_every=2, checkpoint_every=2, log_every=1)
    d["decompose"]["pgd"]["eval_steps"] = 2
    d["threads"] = 1
    pc = parse_config(d)
    (tmp_path / "tok").mkdir()
    for split, n in (("train", 4000), ("val", 1000)):
        np.random.default_rng(0).integers(0, pc.tokenizer.vocab_size, n).astype(np.uint16).tofile(tmp_path / "tok" / f"{split}.bin")
    TargetLM(pc.target.model).save_pretrained(tmp_path / "target")
    run_decompose(pc, tmp_path / "target", tmp_path / "tok", tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    for f in ("components.safetensors", "ci_fn.safetensors", "decomposition.json", "final_config.yaml", "metrics.jsonl",
              "fig_losses.png", "fig_losses.pdf", "fig_l0.png", "fig_l0.pdf", "checkpoints"):
        assert f in names, f
    first = (tmp_path / "out" / "metrics.jsonl").read_text()
    assert first.count('"phase": "train"') == 4
    run_decompose(pc, tmp_path / "target", tmp_path / "tok", tmp_path / "out")  # rerun resumes at the end
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == first
    dec = Decomposition.load(tmp_path / "out", TargetLM.from_pretrained(tmp_path / "target"))
    assert dec.total_C == sum(dec.C.values()) > 0
    assert set(dec.provenance) == {"target_sha256", "seed", "dtype", "train_tokens_sha256", "val_tokens_sha256"}
    assert yaml.safe_load((tmp_path / "out" / "final_config.yaml").read_text())["provenance"] == dec.provenance


def _stage_inputs(tmp_path):
    import yaml

    from vpd.config import parse_config

    d = yaml.safe_load(open("config/ci.yaml"))
    d["decompose"].update(steps=2, checkpoint_every=2)
    pc = parse_config(d)
    (tmp_path / "tok").mkdir()
    for split in ("train", "val"):
        np.zeros(2000, dtype=np.uint16).tofile(tmp_path / "tok" / f"{split}.bin")
    TargetLM(pc.target.model).save_pretrained(tmp_path / "target")
    return d, pc


def test_stage_refuses_missing_validation_shard(tmp_path):
    from vpd.stages.decompose import run_decompose

    _, pc = _stage_inputs(tmp_path)
    (tmp_path / "tok" / "val.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"token shard .*tok/val\.bin does not exist"):
        run_decompose(pc, tmp_path / "target", tmp_path / "tok", tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_stage_refuses_a_target_folder_that_disagrees_with_the_config(tmp_path):
    from vpd.config import parse_config
    from vpd.stages.decompose import run_decompose
    from vpd.utils.errors import InputError

    d, pc = _stage_inputs(tmp_path)
    d["target"]["model"]["d_mlp"] = pc.target.model.d_mlp * 2
    other = parse_config(d)
    with pytest.raises(InputError, match=rf"d_mlp {pc.target.model.d_mlp} in .*config\.json, {2 * pc.target.model.d_mlp} in the config"):
        run_decompose(other, tmp_path / "target", tmp_path / "tok", tmp_path / "out")


def test_iterable_batches_resume_equals_uninterrupted(tmp_path):
    def stream():
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.randint(0, 300, (2, 8), generator=g)

    class Dying:
        """Yields the stream's batches, then "crashes" on the 7th (eval batch + 5 training batches)."""

        def __init__(self):
            self.it, self.n = stream(), 0

        def __iter__(self):
            return self

        def __next__(self):
            self.n += 1
            if self.n == 7:
                raise KeyboardInterrupt
            return next(self.it)

    full = decompose(tiny_target(), stream(), cfg(), out_dir=tmp_path / "a", progress=False)
    with pytest.raises(KeyboardInterrupt):
        decompose(tiny_target(), Dying(), cfg(), out_dir=tmp_path / "b", progress=False)
    resumed = decompose(tiny_target(), stream(), cfg(), out_dir=tmp_path / "b", progress=False)
    assert all(torch.equal(full.components(n)[1], resumed.components(n)[1]) for n in full.names)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


def test_world_size_must_match_the_processes_running():
    with pytest.raises(ValueError, match="decompose.world_size is 2 but the trainer runs in 1 process"):
        decompose(tiny_target(), batches, cfg(world_size=2), progress=False)
