"""Feature-splitting matches on hand-made dictionaries, and the config's cross-section checks."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from vpd.config import ConfigError, parse_config
from vpd.evaluate.splitting import cosine_matrix, match_counts, pair_table, rank_one_cosines, share_from_cosines, vpd_cosines

ROOT = Path(__file__).resolve().parents[1]


def test_identical_dictionaries_match_fully_and_orthogonal_ones_not_at_all():
    d = torch.eye(6)[:4]  # 4 orthonormal unit vectors in R^6
    assert share_from_cosines([cosine_matrix(d, d)], 0.5) == (4, 1.0, 0.0)
    other = torch.eye(6)[4:]  # orthogonal to all of d
    n, share, multi = share_from_cosines([cosine_matrix(d, other)], 0.5)
    assert (n, share, multi) == (4, 0.0, 0.0)


def test_split_units_count_as_multi_matched_and_threshold_is_strict():
    small = torch.tensor([[1.0, 0.0, 0.0]])
    # Two "split" children at 30 degrees either side of the parent (cos 0.866), one unrelated unit,
    # and one at cos 0.45.
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    large = torch.tensor([[c, s, 0.0], [c, -s, 0.0], [0.0, 0.0, 1.0], [0.45, math.sqrt(1 - 0.45**2), 0.0]])
    n, share, _ = share_from_cosines([cosine_matrix(large, small)], 0.5)
    assert n == 4 and share == pytest.approx(0.5)
    _, _, multi = share_from_cosines([cosine_matrix(small, large)], 0.5)
    assert multi == 1.0  # the parent has two matches in the larger run
    assert match_counts(torch.tensor([[0.5, 0.5001, -0.9]]), 0.5).tolist() == [1]  # cosine > 0.5, strictly


def test_rank_one_cosine_equals_the_cosine_of_flattened_matrices():
    g = torch.Generator().manual_seed(0)
    v1, u1 = torch.randn(5, 3, generator=g), torch.randn(3, 4, generator=g)  # V [d_in, C], U [C, d_out]
    v2, u2 = torch.randn(5, 2, generator=g), torch.randn(2, 4, generator=g)
    flat1 = torch.stack([torch.outer(u1[i], v1[:, i]).flatten() for i in range(3)])
    flat2 = torch.stack([torch.outer(u2[j], v2[:, j]).flatten() for j in range(2)])
    torch.testing.assert_close(rank_one_cosines(v1, u1, v2, u2), cosine_matrix(flat1, flat2))
    # Invariant to moving scale (and a joint sign) between U and V; a sign flip of one factor negates it.
    torch.testing.assert_close(rank_one_cosines(-3 * v1, -u1 / 3, v2, u2), rank_one_cosines(v1, u1, v2, u2))
    torch.testing.assert_close(rank_one_cosines(-v1, u1, v2, u2), -rank_one_cosines(v1, u1, v2, u2))


def test_pair_table_covers_ordered_pairs_within_matrices_and_flags_largest_to_smallest():
    eye = torch.eye(4)
    # run "1x": two units per matrix; run "2x": the same two plus two orthogonal ones.
    runs = {
        "1x": {"m0": (eye[:, :2], eye[:2]), "m1": (eye[:, 2:], eye[2:])},
        "2x": {"m0": (eye, eye), "m1": (eye, eye)},
    }
    caps = {"1x": 4, "2x": 8}
    table = pair_table("VPD", "rank_one_UV", runs, caps, vpd_cosines, 0.5)
    assert len(table) == 2
    big = table[table["run_from"] == "2x"].iloc[0]
    assert bool(big["largest_to_smallest"]) and big["n_units"] == 8 and big["share_matched"] == pytest.approx(0.5)
    small = table[table["run_from"] == "1x"].iloc[0]
    assert not bool(small["largest_to_smallest"]) and small["share_matched"] == 1.0


def _ci():
    return yaml.safe_load((ROOT / "config/ci.yaml").read_text())


def test_feature_splitting_must_reuse_trained_baselines_and_mlp_matrices_only():
    data = _ci()
    data["feature_splitting"]["n_latents"] = [64, 999]
    with pytest.raises(ConfigError, match="999"):
        parse_config(data)
    data = _ci()
    data["feature_splitting"]["matrices"] = ["h.*.attn.q_proj"]
    with pytest.raises(ConfigError, match=r"feature_splitting\.matrices"):
        parse_config(data)
