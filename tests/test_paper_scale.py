"""The paper config builds the paper's sizes: target ~67M parameters and a ~539M-parameter CI transformer
(checked on the meta device: nothing is allocated)."""

from pathlib import Path

import torch

from vpd.config import load_config
from vpd.decomp.ci_functions import build_ci_function
from vpd.target.model import TargetLM

ROOT = Path(__file__).resolve().parents[1]


def test_paper_ci_function_and_subcomponent_counts():
    cfg = load_config(ROOT / "config/paper.yaml")
    with torch.device("meta"):
        target = TargetLM(cfg.target.model)
    linears = {n: m for n, m in target.named_modules() if isinstance(m, torch.nn.Linear)}
    C = {}
    for spec in cfg.decompose.matrices:
        for name in linears:
            if __import__("fnmatch").fnmatch(name, spec.pattern):
                C[name] = spec.C
    assert len(C) == 24 and sum(C.values()) == 38_912  # the paper's total
    d_in = {n: linears[n].in_features for n in C}
    with torch.device("meta"):
        ci_fn = build_ci_function(d_in, C, cfg.decompose.ci_fn)
    n = sum(p.numel() for p in ci_fn.parameters())
    # input 27,648 -> 2048, 8 blocks of (4 d^2 attention + 2 d x 8192 MLP), read-out 2048 -> 38,912
    assert abs(n - 539e6) / 539e6 < 0.01, n
