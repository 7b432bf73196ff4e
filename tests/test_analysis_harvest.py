"""Harvest: uniform reservoir sampling, recall/PMI on a hand-built stream, the pass on a tiny decomposition."""

import math

import numpy as np
import pytest
import torch

from vpd.analysis.config import HarvestConfig
from vpd.analysis.harvest import HarvestResult, Reservoir, TokenCounter, harvest
from vpd.config import TargetModelConfig
from vpd.decomp import Decomposition, DecompositionConfig
from vpd.target.model import TargetLM

# chi-square critical values at p = 0.001 (df -> value), from the chi-square table
CHI2_999 = {19: 43.82, 29: 59.70}


def _sample_once(rng, sizes, k, groups):
    """Offer items 0..N-1 of each group in batches of the given sizes; return the kept items per group."""
    res = Reservoir(k, rng)
    n = sum(sizes)
    items = np.arange(n)
    start = 0
    for s in sizes:
        idx = items[start:start + s]
        for g in groups:
            res.offer(np.full(len(idx), g), lambda keep, idx=idx, g=g: {"item": idx[keep], "tag": np.full(len(keep), g)})
        start += s
    group, key, payload = res.sorted()
    assert (payload["tag"] == group).all()  # payloads travel with their events
    return {g: payload["item"][group == g] for g in groups}


def test_reservoir_is_uniform_chi_square():
    rng = np.random.default_rng(12345)
    sizes, k, runs = [3, 7, 1, 9], 5, 2000  # N = 20 items, uneven batches
    counts = {0: np.zeros(20), 1: np.zeros(20)}
    for _ in range(runs):
        kept = _sample_once(rng, sizes, k, groups=(0, 1))
        for g, items in kept.items():
            assert len(items) == k and len(set(items.tolist())) == k  # k distinct items per group
            counts[g][items] += 1
    expected = runs * k / 20
    for g in (0, 1):
        chi2 = float(((counts[g] - expected) ** 2 / expected).sum())
        assert chi2 < CHI2_999[19], (g, chi2, counts[g])
    # the two groups draw independent keys: their samples are not identical run after run
    assert not np.array_equal(counts[0], counts[1])


def test_reservoir_keeps_everything_when_small_and_is_seeded():
    kept = _sample_once(np.random.default_rng(0), [2, 1], k=5, groups=(3,))
    assert sorted(kept[3].tolist()) == [0, 1, 2]
    a = _sample_once(np.random.default_rng(7), [10, 10, 10], 4, (0,))[0]
    b = _sample_once(np.random.default_rng(7), [10, 10, 10], 4, (0,))[0]
    assert np.array_equal(a, b)


def test_reservoir_uniform_over_subsets_of_a_small_stream():
    """All C(4, 2) = 6 pairs of a 4-item stream are equally likely (chi-square over pairs)."""
    rng = np.random.default_rng(99)
    runs = 3000
    pairs = {}
    for _ in range(runs):
        items = tuple(sorted(_sample_once(rng, [1, 2, 1], 2, (0,))[0].tolist()))
        pairs[items] = pairs.get(items, 0) + 1
    assert len(pairs) == 6
    expected = runs / 6
    chi2 = sum((v - expected) ** 2 / expected for v in pairs.values())
    assert chi2 < 20.52  # df 5, p = 0.001


def test_recall_precision_pmi_on_hand_built_stream():
    tokens = torch.tensor([0, 1, 2, 1, 0, 1])
    # component 0 fires on every '1' and on the first '0'; component 1 fires once, on '2'
    firing = torch.zeros(6, 2, dtype=torch.bool)
    firing[[0, 1, 3, 5], 0] = True
    firing[2, 1] = True
    counter = TokenCounter(C=2, vocab_size=4)
    counter.update(tokens[:4], firing[:4])  # two updates: the counts accumulate
    counter.update(tokens[4:], firing[4:])
    tab = counter.table(top_k=3, pmi_min_count=1)
    rec = tab[(tab.c == 0) & (tab.rank_by == "recall")].set_index("token_id")
    assert list(rec.index) == [1, 0]  # 3 firings on '1', 1 on '0'; never on '2'
    assert rec.loc[1, "count"] == 3 and rec.loc[1, "recall"] == pytest.approx(3 / 4)
    assert rec.loc[1, "precision"] == pytest.approx(1.0)
    assert rec.loc[1, "pmi"] == pytest.approx(math.log(3 * 6 / (4 * 3)))
    assert rec.loc[0, "recall"] == pytest.approx(1 / 4) and rec.loc[0, "precision"] == pytest.approx(1 / 2)
    assert rec.loc[0, "pmi"] == pytest.approx(math.log(1 * 6 / (4 * 2)))
    pmi1 = tab[(tab.c == 1) & (tab.rank_by == "pmi")]
    assert list(pmi1.token_id) == [2] and pmi1.pmi.iloc[0] == pytest.approx(math.log(6))
    # with a minimum count of 2, the single co-firing of c0 with '0' is not ranked by PMI
    tab2 = counter.table(top_k=3, pmi_min_count=2)
    assert list(tab2[(tab2.c == 0) & (tab2.rank_by == "pmi")].token_id) == [1]
    assert tab2[(tab2.c == 1) & (tab2.rank_by == "pmi")].empty


def tiny_decomposition(vocab=300, T=12):
    torch.manual_seed(0)
    target = TargetLM(TargetModelConfig(n_layer=1, d_model=16, n_head=2, d_mlp=32, context=T, vocab_size=vocab))
    cfg = DecompositionConfig.from_dict(dict(
        matrices=[{"pattern": "h.*.attn.o_proj", "C": 6}, {"pattern": "h.*.mlp.down_proj", "C": 8}],
        ci_fn=dict(d_model=16, n_blocks=1, n_heads=2, d_mlp=32), steps=2, batch_size=2, seq_len=T))
    return Decomposition(target, cfg, seed=0)


def test_harvest_pass_matches_direct_computation(tmp_path):
    dec = tiny_decomposition()
    windows = torch.randint(0, 40, (10, 13), generator=torch.Generator().manual_seed(3))
    hcfg = HarvestConfig(n_examples=3, context=4, batch_size=4, fire_threshold=0.1, top_k_tokens=4)
    res = harvest(dec, windows, hcfg, seed=1, vocab_size=300)
    ci = dec.ci(windows[:, :12])
    _, xs = dec.matrix_inputs(windows[:, :12])
    for name in dec.names:
        sub = res.subcomponents[res.subcomponents.matrix == name].set_index("c")
        assert np.allclose(sub["density_ci0"], (ci[name] > 0).float().mean((0, 1)).numpy())
        assert np.allclose(sub["density"], (ci[name] > 0.1).float().mean((0, 1)).numpy())
        act = (xs[name].float() @ dec.components(name)[0]).numpy()
        ex = res.examples[res.examples.matrix == name]
        for c, g in ex.groupby("c"):
            assert len(g) == min(3, sub.loc[c, "n_fire"])
        for r in ex.itertuples():
            b, t, o = r.window, r.position, r.offset
            lo = t - o
            n = len(r.tokens)
            assert r.tokens == windows[b, lo:lo + n].tolist()
            assert np.allclose(r.ci, ci[name][b, lo:lo + n, r.c].numpy(), atol=1e-6)
            assert np.allclose(r.act, act[b, lo:lo + n, r.c], atol=1e-5)
            assert r.ci[o] > 0.1  # the sampled token fires
            assert 0 <= lo and lo + n <= 12 and o <= 4 and n - o - 1 <= 4
    # every subcomponent that fires has examples; token stats refer to firing subcomponents only
    fired = res.subcomponents[res.subcomponents.n_fire > 0]
    assert len(res.examples.groupby(["matrix", "c"])) == len(fired)
    res.save(tmp_path, vocab=[str(i) for i in range(300)])
    back = HarvestResult.load(tmp_path)
    assert back.examples["tokens"].map(list).tolist() == res.examples["tokens"].tolist()
    assert back.subcomponents.equals(res.subcomponents)
    # same seed, same sample
    again = harvest(dec, windows, hcfg, seed=1, vocab_size=300)
    assert again.examples[["matrix", "c", "window", "position"]].equals(res.examples[["matrix", "c", "window", "position"]])


def test_sparse_counts_equal_dense_counts_across_merges():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 9, (200,), generator=g)
    firing = torch.rand(200, 4, generator=g) < 0.3
    counter = TokenCounter(C=4, vocab_size=9)
    counter.CONSOLIDATE_AT = 3  # merge the sparse counts many times
    for i in range(0, 200, 17):
        counter.update(tokens[i:i + 17], firing[i:i + 17])
    tab = counter.table(top_k=9, pmi_min_count=1)
    dense = torch.zeros(4, 9, dtype=torch.int64)
    for t, f in zip(tokens, firing):
        dense[:, t] += f.long()
    rec = tab[tab.rank_by == "recall"]
    assert len(rec) == int((dense > 0).sum())
    for r in rec.itertuples():
        assert r.count == dense[r.c, r.token_id]
        assert r.recall == pytest.approx(dense[r.c, r.token_id] / dense[r.c].sum())
    # ranks follow the counts within each subcomponent
    for c, grp in rec.groupby("c"):
        assert grp.sort_values("rank")["count"].is_monotonic_decreasing
