"""Compute recovered on synthetic curves with known answers."""

import pandas as pd
import pytest

from vpd.evaluate.compute_recovered import compute_recovered, compute_recovered_table


def curve(vals, flops=None):
    flops = flops or [100.0 * i for i in range(len(vals))]
    return pd.DataFrame({"step": range(len(vals)), "tokens": flops, "flops": flops, "val_ce": vals})


def test_interpolates_between_points():
    c = curve([8.0, 5.0, 4.0, 3.0, 2.5])  # final flops 400
    r = compute_recovered(c, 3.5)  # halfway between flops 200 and 300
    assert (r.status, r.fraction, r.flops, r.step) == ("ok", pytest.approx(250 / 400), 250.0, 2.5)


def test_exactly_on_logged_point():
    r = compute_recovered(curve([8.0, 5.0, 4.0, 3.0, 2.5]), 4.0)
    assert r.status == "ok" and r.fraction == pytest.approx(0.5)
    assert compute_recovered(curve([8.0, 5.0, 4.0, 3.0, 2.5]), 2.5).fraction == pytest.approx(1.0)
    assert compute_recovered(curve([8.0, 5.0, 4.0, 3.0, 2.5]), 8.0).fraction == 0.0


def test_out_of_range():
    c = curve([8.0, 5.0, 4.0])
    worse = compute_recovered(c, 9.0)
    assert (worse.status, worse.fraction) == ("worse_than_init", 0.0)
    better = compute_recovered(c, 3.9)
    assert (better.status, better.fraction) == ("better_than_final", 1.0)


def test_non_monotone_curve_uses_first_crossing():
    # dips to 3 at flops 200, back up to 4 at 300, final 3.5 at 400
    c = curve([8.0, 5.0, 3.0, 4.0, 3.5])
    r = compute_recovered(c, 4.0)  # first crossing: between 100 (5.0) and 200 (3.0): flops 150
    assert r.fraction == pytest.approx(150 / 400)
    r = compute_recovered(c, 3.2)  # below the final value but reached at the dip
    assert r.status == "ok" and r.fraction == pytest.approx((100 + 0.9 * 100) / 400)


def test_unsorted_input_and_table():
    c = curve([8.0, 5.0, 4.0]).iloc[::-1]
    t = compute_recovered_table(c, {"a": 4.5, "b": 10.0})
    assert t["fraction"].tolist() == pytest.approx([150 / 200, 0.0])
    assert t["status"].tolist() == ["ok", "worse_than_init"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="columns"):
        compute_recovered(pd.DataFrame({"step": [0]}), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        compute_recovered(curve([8.0, 5.0]), float("nan"))
