"""BatchTopK transcoders: exact top-k, learning a known sparse dictionary, training on a target."""

import pytest
import torch

from vpd.baselines.config import TranscoderTrainConfig
from vpd.baselines.transcoders import (
    Transcoder, batch_topk, build_sweep, evaluate_transcoder_local, fvu, make_optimizer, mlp_activations, threshold_acts,
    train_transcoders, transcoder_step,
)
from vpd.config import TargetModelConfig
from vpd.target.model import TargetLM


def test_batch_topk_keeps_exactly_k_per_token_over_the_batch():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(16, 40, generator=g).abs() + 0.1  # all positive
    out = batch_topk(pre, k=3)
    assert int((out != 0).sum()) == 3 * 16
    # the kept ones are the 48 largest of the whole batch, with their values
    kept = out[out != 0].sort().values
    assert torch.equal(kept, pre.flatten().topk(48).values.sort().values)
    # per-token counts vary: it is a batch budget, not a per-token one
    per_token = (out != 0).sum(1)
    assert per_token.sum() == 48
    # negatives never survive the ReLU, even when fewer than k*N are positive
    neg = batch_topk(-pre, k=3)
    assert int((neg != 0).sum()) == 0
    assert torch.equal(threshold_acts(torch.tensor([-1.0, 0.2, 0.6]), 0.5), torch.tensor([0.0, 0.0, 0.6]))


def test_transcoder_encode_batchtopk_counts_and_clt_shapes():
    tc = Transcoder("clt", n_layer=3, d_in=8, d_out=6, n_latents=20, k=4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tc.b_enc.fill_(10.0)  # every pre-activation positive
    x = torch.randn(2, 5, 8)
    acts = tc.encode(1, x, mode="batchtopk")
    assert acts.shape == (2, 5, 20) and int((acts > 0).sum()) == 4 * 10
    assert [tc.W_dec[i].shape[1] for i in range(3)] == [3, 2, 1]
    assert [tc.latent_param_cost(i) for i in range(3)] == [8 + 18, 8 + 12, 8 + 6]
    assert tc.sources(2) == [0, 1, 2]
    for i in range(3):
        assert torch.allclose(tc.decoder_norms(i), torch.ones(20), atol=1e-6)
    with pytest.raises(RuntimeError, match="threshold"):
        tc.encode(0, x, mode="threshold")


def synthetic(n, g, D_in, D_out, k_true):
    L = D_in.shape[0]
    idx = torch.rand(n, L, generator=g).argsort(1)[:, :k_true]  # k_true random features per token
    s = torch.zeros(n, L).scatter(1, idx, 0.5 + torch.rand(n, k_true, generator=g))  # [n, L_true]
    return s @ D_in, s @ D_out


@pytest.fixture
def one_thread():
    """Tiny matmuls run faster on one thread, above all on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_learns_known_sparse_dictionary_quickly(one_thread):
    """300 steps of 256 tokens (under a second on one free core) reach FVU < 0.1."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    d, L_true, k_true = 16, 24, 2
    D_in = torch.nn.functional.normalize(torch.randn(L_true, d, generator=g), dim=1)
    D_out = torch.randn(L_true, d, generator=g)
    tcfg = TranscoderTrainConfig(steps=300, batch_size=1, lr=2e-2, warmup_steps=10, dead_tokens=5000)
    tc = Transcoder("plt", 1, d, d, n_latents=48, k=k_true, generator=g)
    opt = make_optimizer(tc, tcfg)
    for step in range(tcfg.steps):
        x, y = synthetic(256, g, D_in, D_out, k_true)
        stats = transcoder_step(tc, opt, [x], [y], tcfg, step)
    x, y = synthetic(4096, g, D_in, D_out, k_true)
    with torch.no_grad():
        preds, acts, _ = tc([x], mode="threshold")
    assert fvu(preds[0], y).item() < 0.1, stats
    assert (acts[0] > 0).sum(1).float().mean().item() == pytest.approx(k_true, rel=0.25)


def tiny_target(seed=0):
    torch.manual_seed(seed)
    cfg = TargetModelConfig(n_layer=2, d_model=16, n_head=2, d_mlp=32, context=8, vocab_size=260)
    return TargetLM(cfg).eval()


def test_train_on_target_activations_and_roundtrip(tmp_path):
    target = tiny_target()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    tcfg = TranscoderTrainConfig(steps=30, batch_size=4, lr=3e-3, warmup_steps=5, dead_tokens=64)
    tcs = {"plt": Transcoder("plt", 2, 16, 16, 64, 4, generator=g), "clt": Transcoder("clt", 2, 16, 16, 64, 4, generator=g)}
    stats = train_transcoders(target, lambda: torch.randint(0, 260, (4, 8), generator=g), tcs, tcfg, progress=False)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # target never written
    assert set(stats) == {"plt", "clt"} and list(stats["plt"].columns) == ["layer", "fvu", "l0", "dead_fraction"]
    assert not torch.isnan(tcs["plt"].threshold).any()
    windows = torch.randint(0, 260, (6, 9), generator=g)
    local = evaluate_transcoder_local(target, tcs["clt"], windows, batch_size=4, dead_tokens=64)
    assert list(local["layer"]) == [0, 1] and (local["fvu"] >= 0).all() and "dead_fraction" in local
    tcs["clt"].save(tmp_path / "clt", extra={"fvu": local["fvu"].tolist()})
    loaded = Transcoder.load(tmp_path / "clt")
    xs, _ = mlp_activations(target, windows[:, :-1])
    with torch.no_grad():
        a, b = tcs["clt"](xs, mode="threshold")[0], loaded(xs, mode="threshold")[0]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_build_sweep_names_and_determinism():
    a = build_sweep(["plt", "clt"], [32, 64], [4, 8], n_layer=2, d_model=16, seed=0)
    assert list(a) == [f"{kd}_L{n}_k{k}" for kd in ("plt", "clt") for n in (32, 64) for k in (4, 8)]
    b = build_sweep(["plt", "clt"], [32, 64], [4, 8], n_layer=2, d_model=16, seed=0)
    assert all(torch.equal(a[n].W_enc, b[n].W_enc) for n in a)
    assert a["clt_L64_k8"].n_latents == 64 and a["clt_L64_k8"].k == 8 and a["clt_L64_k8"].kind == "clt"
