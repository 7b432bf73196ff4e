"""Causal-importance (CI) functions: from the target's clean matrix inputs to pre-activations z.

- `GlobalCITransformer` (the paper's): every matrix input RMS-normalised without gain,
  concatenated in sorted-name order, Linear -> d_model, N pre-norm blocks of bidirectional RoPE
  attention + GELU MLP, Linear -> sum_l C_l, split per matrix.
- `PerMatrixMLP` (SPD's cheap variant): one small GELU MLP per matrix from its input to C.

Both return the pre-activations of all matrices as one flat fp32 tensor z [..., ΣC] laid out
in `.order` (sorted names) with sizes `.splits`; `readouts` turns z into the lower-leaky CI
(masks) and the upper-leaky CI (minimality losses).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from vpd.decomp.config import CIFunctionConfig
from vpd.decomp.sigmoids import lower_and_upper_leaky


def _rope(T: int, head_dim: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, head_dim] for the half-split rotary layout."""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)  # [hd/2]
    ang = torch.arange(T, dtype=torch.float64, device=device)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)  # [T, hd]
    return ang.cos().float(), ang.sin().float()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rot * sin.to(x.dtype)


class _Block(nn.Module):
    """Pre-norm block: bidirectional RoPE self-attention, then a GELU MLP."""

    def __init__(self, d: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.n_heads, self.hd = n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.fc = nn.Linear(d, d_mlp)
        self.proj = nn.Linear(d_mlp, d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        h = F.rms_norm(x, (D,))
        q, k, v = self.qkv(h).view(B, T, 3, self.n_heads, self.hd).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, hd]
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=False)  # [B, H, T, hd]
        x = x + self.o(att.transpose(1, 2).reshape(B, T, D))
        return x + self.proj(F.gelu(self.fc(F.rms_norm(x, (D,)))))


class GlobalCITransformer(nn.Module):
    def __init__(self, d_in: Mapping[str, int], C: Mapping[str, int], cfg: CIFunctionConfig):
        super().__init__()
        self.order = sorted(d_in)  # the concatenation / read-out layout
        self.splits = [int(C[n]) for n in self.order]
        self.cfg = cfg
        self.proj_in = nn.Linear(sum(d_in[n] for n in self.order), cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg.d_model, cfg.n_heads, cfg.d_mlp) for _ in range(cfg.n_blocks))
        self.proj_out = nn.Linear(cfg.d_model, sum(self.splits))
        self._rope_cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        xs = [F.rms_norm(inputs[n].float(), (inputs[n].shape[-1],)) for n in self.order]
        x = torch.cat(xs, dim=-1)  # [B, T, sum d_in]
        no_seq = x.ndim == 2  # non-sequence targets: one position per example
        if no_seq:
            x = x.unsqueeze(1)
        x = self.proj_in(x)  # [B, T, d_model]
        T = x.shape[1]
        key = (T, str(x.device))
        if key not in self._rope_cache:
            self._rope_cache[key] = _rope(T, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_base, x.device)
        cos, sin = self._rope_cache[key]
        for block in self.blocks:
            x = block(x, cos, sin)
        z = self.proj_out(x).float()  # [B, T, ΣC]
        return z.squeeze(1) if no_seq else z


class PerMatrixMLP(nn.Module):
    def __init__(self, d_in: Mapping[str, int], C: Mapping[str, int], cfg: CIFunctionConfig):
        super().__init__()
        self.order = sorted(d_in)
        self.splits = [int(C[n]) for n in self.order]
        self.mlps = nn.ModuleDict()
        for n in self.order:
            widths = [d_in[n], *cfg.hidden]
            layers: list[nn.Module] = []
            for a, b in zip(widths[:-1], widths[1:]):
                layers += [nn.Linear(a, b), nn.GELU()]
            layers.append(nn.Linear(widths[-1], int(C[n])))
            self.mlps[n.replace(".", "__")] = nn.Sequential(*layers)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.mlps[n.replace(".", "__")](inputs[n]).float() for n in self.order], dim=-1)


def build_ci_function(d_in: Mapping[str, int], C: Mapping[str, int], cfg: CIFunctionConfig) -> nn.Module:
    if cfg.kind == "global_transformer":
        return GlobalCITransformer(d_in, C, cfg)
    if cfg.kind == "per_matrix_mlp":
        return PerMatrixMLP(d_in, C, cfg)
    raise ValueError(f"unknown ci_fn.kind {cfg.kind!r}")


def readouts(z: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower-leaky CI for masks, upper-leaky CI for minimality), both [..., ΣC] fp32."""
    return lower_and_upper_leaky(z, alpha)
