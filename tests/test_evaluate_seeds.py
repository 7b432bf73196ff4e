"""The seeds comparison by hand: headline mean/std over evaluation folders, and MMCS."""

import math

import pandas as pd
import pytest
import torch

from vpd.evaluate.seeds import factors_mmcs, headline_table, mmcs, seed_mmcs_table


def write_eval(folder, l0, alive, dead_fraction, stochastic_ce, pgd20):
    folder.mkdir(parents=True)
    pd.DataFrame({"layer": ["0", "all"], "threshold": [0.0, 0.0], "C": [10, 10], "l0": [l0, l0],
                  "alive": [alive, alive], "density": [l0 / alive] * 2}).to_csv(folder / "l0_by_layer.csv", index=False)
    pd.DataFrame({"matrix": ["all"], "C": [10], "threshold": [0.0], "n_tokens": [100], "never_fire": [2], "rare": [1],
                  "dead": [int(10 * dead_fraction)], "rare_tokens": [10], "dead_fraction": [dead_fraction]}
                 ).to_csv(folder / "firing_counts.csv", index=False)
    pd.DataFrame({"strategy": ["target", "stochastic"], "ce": [2.0, stochastic_ce], "kl": [0.0, stochastic_ce - 2.0],
                  "n_tokens": [100, 100]}).to_csv(folder / "mask_strategies.csv", index=False)
    pd.DataFrame({"name": ["stochastic"], "ce": [stochastic_ce], "fraction": [0.5], "status": ["ok"], "flops": [1.0],
                  "step": [1]}).to_csv(folder / "compute_recovered.csv", index=False)
    pd.DataFrame({"steps": ["20", "zero_ablation"], "kl_mean": [pgd20, 9.0], "kl_sem": [0.1, float("nan")],
                  "kl_min": [pgd20, 9.0], "kl_max": [pgd20, 9.0], "n_batches": [16, 0]}
                 ).to_csv(folder / "pgd_steps.csv", index=False)


def test_headline_mean_std_min_max_over_seeds(tmp_path):
    write_eval(tmp_path / "a", l0=10.0, alive=8, dead_fraction=0.2, stochastic_ce=2.5, pgd20=1.0)
    write_eval(tmp_path / "b", l0=14.0, alive=6, dead_fraction=0.4, stochastic_ce=2.7, pgd20=3.0)
    t = headline_table({0: tmp_path / "a", 1: tmp_path / "b"}).set_index("quantity")
    l0 = t.loc["L0 (CI > 0)"]
    assert (l0["mean"], l0["min"], l0["max"], l0["n"], l0["paper"]) == (12.0, 10.0, 14.0, 2, 205.0)
    assert l0["std"] == pytest.approx(math.sqrt(8))  # sample std of (10, 14)
    assert t.loc["dead fraction", "mean"] == pytest.approx(0.3)
    assert t.loc["PGD-20 KL", "mean"] == 2.0 and t.loc["PGD-20 KL", "paper"] == 0.83
    assert t.loc["stochastic: CE", "paper"] == 2.84 and t.loc["stochastic: KL", "mean"] == pytest.approx(0.6)
    assert t.loc["stochastic: compute recovered", "mean"] == 0.5
    assert t.loc["zero ablation KL", "std"] == 0.0


def seed_pareto_points():
    """Two seeds' VPD point (CE increase 0.5, 0.7) and PLT point (1.5, 1.7) over a target CE of 2.5."""
    from vpd.evaluate.pareto import ParetoPoint

    return {s: [ParetoPoint("VPD", "tau=0", l0_per_module=l0, l0_per_mlp=2 * l0, active_params=1.0, ce=ce,
                            target_ce=2.5, tau=0.0),
                ParetoPoint("PLT", "L=64,k=4", l0_per_module=4.0, l0_per_mlp=4.0, active_params=1.0, ce=ce + 1,
                            target_ce=2.5, n_latents=64, k=4)]
            for s, (l0, ce) in {0: (20.0, 3.0), 1: (22.0, 3.2)}.items()}


def test_pareto_quantities_label_by_method_and_setting():
    from vpd.evaluate.seeds import pareto_quantities

    q = pareto_quantities(seed_pareto_points()[0])
    assert sorted(q) == ["PLT Pareto L=64,k=4: CE increase", "PLT Pareto L=64,k=4: L0 per module",
                         "VPD Pareto tau=0: CE increase", "VPD Pareto tau=0: L0 per module"]
    assert q["VPD Pareto tau=0: CE increase"][0] == pytest.approx(0.5)
    assert q["PLT Pareto L=64,k=4: L0 per module"][0] == 4.0 and math.isnan(q["VPD Pareto tau=0: CE increase"][1])


def test_headline_table_merges_extra_quantities_per_seed(tmp_path):
    from vpd.evaluate.seeds import pareto_quantities

    write_eval(tmp_path / "a", l0=10.0, alive=8, dead_fraction=0.2, stochastic_ce=2.5, pgd20=1.0)
    write_eval(tmp_path / "b", l0=14.0, alive=6, dead_fraction=0.4, stochastic_ce=2.7, pgd20=3.0)
    extra = {s: pareto_quantities(p) for s, p in seed_pareto_points().items()}
    t = headline_table({0: tmp_path / "a", 1: tmp_path / "b"}, extra=extra).set_index("quantity")
    vpd = t.loc["VPD Pareto tau=0: CE increase"]
    assert vpd["mean"] == pytest.approx(0.6) and vpd["n"] == 2 and vpd["std"] == pytest.approx(math.sqrt(0.02))
    assert t.loc["VPD Pareto tau=0: L0 per module", "min"] == 20.0
    assert t.loc["PLT Pareto L=64,k=4: CE increase", "max"] == pytest.approx(1.7)
    assert t.loc["L0 (CI > 0)", "mean"] == 12.0  # the evaluation quantities are kept


def test_splitting_quantities_by_hand():
    from vpd.evaluate.seeds import splitting_quantities

    q = splitting_quantities({1.0: 200, 4.0: 300}, {"plt": {64: 50, 256: 150}, "clt": {4096: 10, 32768: 0}})
    vpd = q["feature splitting VPD: alive(4x C) / alive(1x C)"]
    assert vpd[0] == 1.5 and vpd[1] == pytest.approx(6520 / 6507)  # the paper's alive at 4x and 1x C
    plt_ratio, plt_paper = q["feature splitting PLT: alive(L256) / alive(L64)"]
    assert plt_ratio == 3.0 and math.isnan(plt_paper)  # a 4x dictionary span; the paper's spans 8x
    clt_ratio, clt_paper = q["feature splitting CLT: alive(L32768) / alive(L4096)"]
    assert clt_ratio == 0.0 and clt_paper == pytest.approx(61085 / 10827)
    # a largest multiplier the paper's figure does not have, and nothing alive at 1x
    q = splitting_quantities({1.0: 0, 2.0: 10}, {})
    value, paper = q["feature splitting VPD: alive(2x C) / alive(1x C)"]
    assert math.isnan(value) and math.isnan(paper) and len(q) == 1


def test_seeds_splitting_runs_are_the_ratio_ends_at_each_seed():
    from vpd.config import ConfigError, parse_config
    from vpd.decomp.variants import variant_decompose_config
    from vpd.sweeps import (
        TranscoderJob,
        find_transcoder,
        find_variant,
        seed_splitting_transcoders,
        seed_splitting_variants,
        variant_jobs,
        variant_steps,
    )
    from tests.test_config import _load

    cfg = parse_config({**_load("ci.yaml"), "seeds": [0, 2]})
    variants = seed_splitting_variants(cfg)
    assert {s: {m: j.name for m, j in by_m.items()} for s, by_m in variants.items()} == {
        0: {1.0: "split_1x", 4.0: "split_4x"}, 2: {1.0: "split_1x_s2", 4.0: "split_4x_s2"}}
    seeded = variants[2][4.0]
    assert (seeded.purpose, seeded.seed, seeded.C_multiplier) == ("seed_splitting", 2, 4.0)
    assert variants[0][1.0] in variant_jobs(cfg) and find_variant(cfg, "split_4x_s2") == seeded
    # the same decomposition config as the run seed's 4x variant, at its own seed and steps
    from vpd.target.model import TargetLM

    target = TargetLM(cfg.target.model)
    config = variant_decompose_config(cfg, seeded, target)
    assert config == variant_decompose_config(cfg, variants[0][4.0], target)
    assert [m.C for m in config.matrices] == [4 * m.C for m in variant_decompose_config(cfg, variants[2][1.0], target).matrices]
    assert variant_steps(cfg, seeded) == cfg.feature_splitting.steps
    tcs = seed_splitting_transcoders(cfg)
    assert {s: [j.name for j in by_n.values()] for s, by_n in tcs["clt"].items()} == {
        0: ["clt_L64_k4", "clt_L256_k4"], 2: ["clt_L64_k4_s2", "clt_L256_k4_s2"]}
    assert find_transcoder(cfg, "plt_L64_k4_s2") == TranscoderJob("plt", 64, 4, seed=2)
    assert seed_splitting_variants(parse_config({**_load("ci.yaml"), "seeds": []})) == {}
    data = _load("ci.yaml")
    data["seeds"], data["feature_splitting"]["c_multipliers"] = [0, 1], [0.5, 2.0]
    with pytest.raises(ConfigError, match="c_multipliers must contain 1.0"):
        parse_config(data)


def test_mmcs_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[-3.0, 0.0], [1.0, 1.0]])
    # row 1 of a: |cos| 1 with b0 (sign ignored); row 2: max(0, 1/sqrt2)
    assert mmcs(a, b) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    assert mmcs(a, a) == pytest.approx(1.0)
    assert math.isnan(mmcs(a[:0], b))


def test_factors_mmcs_uses_alive_sets_and_weights_matrices_by_them():
    V = torch.eye(3)  # [d_in, C]: subcomponent c's V is e_c
    U = torch.eye(3)  # [C, d_out]
    a = {"m": (V, U)}
    b = {"m": (V[:, [1, 0, 2]], U[[1, 0, 2]])}  # the same subcomponents in another order
    alive_all = {"m": torch.tensor([True, True, True])}
    assert factors_mmcs(a, b, alive_all, alive_all) == {"U": 1.0, "V": 1.0, "n": 3}
    # b keeps only its first subcomponent alive (= a's second): a's 0 and 2 find cos 0
    alive_b = {"m": torch.tensor([True, False, False])}
    out = factors_mmcs(a, b, alive_all, alive_b)
    assert out["U"] == pytest.approx(1 / 3) and out["n"] == 3
    table = seed_mmcs_table({0: a, 1: b}, {0: alive_all, 1: alive_all})
    assert table["run_a"].tolist() == ["seed 0", "seed 1", "random init"] and table["method"].iloc[0] == "VPD"
    assert table.loc[0, "U"] == 1.0 and table.loc[0, "paper_U"] == 0.48
    assert 0 < table.loc[2, "U"] < 1  # two random draws of 3-vectors


def test_seed_transcoders_are_the_largest_dictionary_per_kind_at_each_extra_seed():
    import zlib

    from vpd.config import parse_config
    from vpd.sweeps import TranscoderJob, find_transcoder, seed_transcoders
    from tests.test_config import _load

    cfg = parse_config({**_load("ci.yaml"), "seeds": [0, 1, 2]})
    jobs = seed_transcoders(cfg)
    assert sorted(jobs) == ["clt", "plt"]
    assert {s: j.name for s, j in jobs["plt"].items()} == {0: "plt_L256_k8", 1: "plt_L256_k8_s1", 2: "plt_L256_k8_s2"}
    assert find_transcoder(cfg, "clt_L256_k8_s2") == TranscoderJob("clt", 256, 8, seed=2)
    # the baselines job keeps its initialisation; a seed job starts where a run at that seed would
    crc = zlib.crc32(b"plt_L256_k8")
    assert jobs["plt"][0].init_seed(0) == crc
    assert jobs["plt"][2].init_seed(0) == 2 * 1_000_003 + crc == jobs["plt"][0].init_seed(2)
    assert jobs["plt"][2].run_seed(0) == 2 and jobs["plt"][0].run_seed(5) == 5
    assert seed_transcoders(parse_config({**_load("ci.yaml"), "seeds": []})) == {}


def test_transcoder_factors_and_mmcs_rows():
    from vpd.baselines.transcoders import Transcoder
    from vpd.evaluate.seeds import transcoder_factors

    g = torch.Generator().manual_seed(0)
    a = Transcoder("clt", 2, 3, 4, 5, 2, generator=g)
    b = Transcoder("clt", 2, 3, 4, 5, 2, generator=g)
    with torch.no_grad():  # b = a with its latents in another order
        perm = torch.tensor([4, 3, 2, 1, 0])
        b.W_enc.copy_(a.W_enc[:, :, perm])
        for i in range(2):
            b.W_dec[i].copy_(a.W_dec[i][perm])
    a.since_fired[0, 0] = 10  # dead by a 10-token criterion
    fa, alive_a = transcoder_factors(a, dead_tokens=10)
    fb, alive_b = transcoder_factors(b, dead_tokens=10)
    V, U = fa["layer 1"]
    assert V.shape == (3, 5) and U.shape == (5, 1 * 4)  # layer 1 of a 2-layer CLT writes to one layer
    assert fa["layer 0"][1].shape == (5, 2 * 4)  # layer 0 writes to both
    assert alive_a["layer 0"].tolist() == [False, True, True, True, True] and alive_a["layer 1"].all()
    table = seed_mmcs_table({0: {"m": (torch.eye(2), torch.eye(2))}, 1: {"m": (torch.eye(2), torch.eye(2))}},
                            {0: {"m": torch.tensor([True, True])}, 1: {"m": torch.tensor([True, True])}},
                            {"clt": ({0: fa, 1: fb}, {0: alive_a, 1: alive_b})})
    assert table["method"].tolist() == ["VPD", "VPD", "CLT", "CLT", "random init"]
    clt = table[table["method"] == "CLT"]
    # a -> b: every alive latent of a finds itself in b. b -> a: b's latent 4 is a's dead latent 0, so it
    # finds only its best other match in layer 0; the other 4 + 5 find themselves.
    lone = {k: mmcs(vecs[[4]] if k == "U" else vecs.T[[4]], ref[1:] if k == "U" else ref.T[1:])
            for k, vecs, ref in (("U", fb["layer 0"][1], fa["layer 0"][1]), ("V", fb["layer 0"][0], fa["layer 0"][0]))}
    assert lone["U"] < 1 and lone["V"] < 1
    assert clt["U"].tolist() == pytest.approx([1.0, (9 + lone["U"]) / 10])
    assert clt["V"].tolist() == pytest.approx([1.0, (9 + lone["V"]) / 10])
    assert clt["n_alive"].tolist() == [4 + 5, 5 + 5]  # a's dead latent is not compared; b has none dead
    assert clt["paper_U"].tolist() == [0.61, 0.61] and clt["paper_V"].isna().all()
