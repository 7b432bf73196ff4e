"""Pretraining compute recovered: where on the target's own training curve a CE is first reached.

Given the target's `curve.csv` (step, tokens, flops, val_ce; logged on the same held-out windows)
and the validation CE of a masked model, the answer is the fraction of the target's final training
compute (flops at the last logged point) at which the curve first gets down to that CE, linearly
interpolated between the two logged points around the first crossing. Out-of-range CEs are never
extrapolated: a CE above the curve's first point gives fraction 0 with status
"worse_than_init"; a CE below every point gives fraction 1.0 with status "better_than_final".
A non-monotone curve is read at its first crossing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Mapping

import numpy as np
import pandas as pd

Status = Literal["ok", "worse_than_init", "better_than_final"]
CURVE_COLUMNS = ("step", "flops", "val_ce")


@dataclass(frozen=True)
class Recovered:
    ce: float  # the CE looked up
    fraction: float  # of the final training compute, in [0, 1]
    status: Status
    flops: float  # interpolated compute at the crossing (0 / final flops when out of range)
    step: float  # interpolated step at the crossing


def _clean_curve(curve: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in CURVE_COLUMNS if c not in curve.columns]
    if missing:
        raise ValueError(f"target curve lacks columns {missing} (curve.csv has step, tokens, flops, val_ce)")
    if len(curve) == 0:
        raise ValueError("target curve is empty")
    curve = curve.sort_values("step", kind="stable").reset_index(drop=True)
    if not np.isfinite(curve["val_ce"].to_numpy(float)).all():
        raise ValueError("target curve has non-finite val_ce values")
    if float(curve["flops"].iloc[-1]) <= 0:
        raise ValueError("target curve's last point has no training compute (flops <= 0)")
    return curve


def compute_recovered(curve: pd.DataFrame, ce: float) -> Recovered:
    """Fraction of the target's final compute at which its val CE first reaches `ce`."""
    if math.isnan(ce):
        raise ValueError("compute_recovered: CE is NaN")
    curve = _clean_curve(curve)
    vals = curve["val_ce"].to_numpy(float)
    flops = curve["flops"].to_numpy(float)
    steps = curve["step"].to_numpy(float)
    final = flops[-1]
    if ce > vals[0]:
        return Recovered(ce, 0.0, "worse_than_init", 0.0, 0.0)
    reached = np.nonzero(vals <= ce)[0]
    if len(reached) == 0:
        return Recovered(ce, 1.0, "better_than_final", final, float(steps[-1]))
    j = int(reached[0])
    if j == 0:
        f, s = flops[0], steps[0]
    else:
        # vals[j-1] > ce >= vals[j]: linear interpolation inside the first crossing segment.
        t = (vals[j - 1] - ce) / (vals[j - 1] - vals[j])
        f = flops[j - 1] + t * (flops[j] - flops[j - 1])
        s = steps[j - 1] + t * (steps[j] - steps[j - 1])
    return Recovered(ce, float(f / final), "ok", float(f), float(s))


def compute_recovered_table(curve: pd.DataFrame, ces: Mapping[str, float]) -> pd.DataFrame:
    """One row per named CE (e.g. per mask strategy): name, ce, fraction, status, flops, step."""
    rows = [{"name": name, **asdict(compute_recovered(curve, float(ce)))} for name, ce in ces.items()]
    return pd.DataFrame(rows, columns=["name", "ce", "fraction", "status", "flops", "step"])
