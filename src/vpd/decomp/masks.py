"""Masks from causal importances: stochastic sampling with k-subset routing, and source masks.

A mask interpolates between the CI g and 1 with a source r in [0, 1]: m = g + (1 - g) r; the Δ
channel takes m_Δ = r_Δ directly (its CI is 0). Stochastic masks draw r ~ U(0, 1); the
adversary's r are its sources. Routing decides per position which matrices use
components at all; an unrouted matrix uses its original W, which the masked forward reproduces
exactly with m = 1 and m_Δ = 1 (components.py), so routing is folded into the masks here.

For speed, the trainer keeps all matrices' CIs and masks in one flat tensor [..., ΣC] (one
elementwise op per step instead of one per matrix); `FlatLayout` maps it to per-matrix views.
The Δ masks of all matrices form one tensor [..., L].
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Optional, Sequence

import torch

from vpd.decomp import fused


class FlatLayout:
    """Order and sizes of the matrices inside a flat [..., ΣC] tensor."""

    def __init__(self, names: Sequence[str], C: Sequence[int]):
        self.names = list(names)
        self.C = [int(c) for c in C]
        self.total = sum(self.C)
        self.L = len(self.names)

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor]) -> "FlatLayout":
        return cls(list(tensors), [t.shape[-1] for t in tensors.values()])

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """[..., ΣC] -> {name: [..., C]} (views)."""
        return dict(zip(self.names, flat.split(self.C, dim=-1)))

    def split_delta(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """[..., L] -> {name: [...]} (views)."""
        return {n: flat[..., i] for i, n in enumerate(self.names)}

    def cat(self, per: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([per[n] for n in self.names], dim=-1)


def uniform_k_subset_routing(
    names: list[str], lead_shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device
) -> dict[str, torch.Tensor]:
    """Per position: k ~ U{1..L}, then a uniformly random k-subset of the L matrices.

    Returns name -> bool [*lead_shape] (True = routed through components). Every position has
    between 1 and L routed matrices and the count is uniform on 1..L.
    """
    routed = _routing(len(names), lead_shape, generator, device)
    return {n: routed[..., i] for i, n in enumerate(names)}


def _routing(L: int, lead_shape: tuple[int, ...], generator, device) -> torch.Tensor:
    """bool [*lead, L] with exactly k ~ U{1..L} True per position, on a uniform random subset."""
    k = torch.randint(1, L + 1, (*lead_shape, 1), generator=generator, device=device)  # [..., 1]
    noise = torch.rand((*lead_shape, L), generator=generator, device=device)  # [..., L]
    ranks = noise.argsort(dim=-1).argsort(dim=-1)  # a uniform random permutation per position
    return ranks < k


def _fill_randomness(r: torch.Tensor, dm: torch.Tensor, routed: Optional[torch.Tensor], generator) -> None:
    """Fill r [..., ΣC] and r_Δ [..., L] with U(0, 1) and routed [..., L] with a k-subset
    routing, in this fixed draw order from `generator` (None: torch's default generator)."""
    r.uniform_(generator=generator)
    dm.uniform_(generator=generator)
    if routed is not None:
        routed.copy_(_routing(routed.shape[-1], tuple(routed.shape[:-1]), generator, routed.device))


@functools.lru_cache(maxsize=1)
def _row_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="vpd-noise")


def stochastic_masks_flat(
    g: torch.Tensor,
    layout: FlatLayout,
    generator: Optional[torch.Generator] = None,
    routing: str = "uniform_k_subset",
    row_seeds: Optional[Sequence[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample of the stochastic masks from the flat CI g [..., ΣC].

    r ~ U(0,1) per (position, channel) and per (position, matrix) for Δ. Returns (m [..., ΣC],
    m_Δ [..., L]); with routing, unrouted (position, matrix) pairs get m = 1 and m_Δ = 1.
    With `row_seeds` (one per row of g's first dim) row i's randomness comes from its own
    generator seeded row_seeds[i], so a row's sample does not depend on which rows share its
    batch (multi-process runs split batches by rows); otherwise everything comes from `generator`.
    """
    if routing not in ("uniform_k_subset", "all"):
        raise ValueError(f"routing must be 'uniform_k_subset' or 'all', got {routing!r}")
    lead = tuple(g.shape[:-1])
    r = torch.empty((*lead, layout.total), device=g.device, dtype=torch.float32)
    dm = torch.empty((*lead, layout.L), device=g.device, dtype=torch.float32)
    routed = torch.empty((*lead, layout.L), device=g.device, dtype=torch.bool) if routing == "uniform_k_subset" else None
    if row_seeds is None:
        _fill_randomness(r, dm, routed, generator)
    else:
        if len(row_seeds) != lead[0]:
            raise ValueError(f"{len(row_seeds)} row seeds for a batch of {lead[0]} rows")
        # row i from its own generator, filled in place; CPU draws are serial per generator, so
        # rows are drawn on two threads (the values do not depend on the threading)
        def draw_row(i: int) -> None:
            gen = torch.Generator(device=g.device).manual_seed(int(row_seeds[i]))
            _fill_randomness(r[i], dm[i], None if routed is None else routed[i], gen)

        if g.device.type == "cpu" and lead[0] > 1:
            list(_row_pool().map(draw_row, range(lead[0])))
        else:
            for i in range(lead[0]):
                draw_row(i)
    if routed is not None:
        # unrouted (position, matrix) pairs: source 1, so m = 1 and m_Δ = 1 exactly (per matrix,
        # in place on broadcast views: no [..., ΣC] routing tensor is built)
        for i, noise in enumerate(r.split(layout.C, dim=-1)):
            noise.masked_fill_(~routed[..., i : i + 1], 1.0)
        dm = dm.masked_fill_(~routed, 1.0)
    return source_mask(g, r), dm


class _SourceMask(torch.autograd.Function):
    """m = g + (1 - g) s, forward and backward each one fused kernel (fused.py)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, s)
        return fused.source_mask(g, s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g, s = ctx.saved_tensors
        need_g, need_s = ctx.needs_input_grad
        grad = grad.contiguous()
        if need_g:
            dg, ds = fused.source_mask_backward(g, s, grad)
            return dg, (ds if need_s else None)
        return None, (fused.source_mask_backward_s(g, grad) if need_s else None)


def source_mask(g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """m = g + (1 - g) s for CI g and sources s in [0, 1] of the same shape."""
    return _SourceMask.apply(g, s)


def source_masks_flat(g: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks from flat sources [..., ΣC + L] (components first, then one Δ channel per matrix)."""
    n = g.shape[-1]
    m = source_mask(g, sources[..., :n].expand_as(g))
    dm = sources[..., n:].expand(*g.shape[:-1], sources.shape[-1] - n)
    return m, dm


def stochastic_masks(
    ci: Mapping[str, torch.Tensor],
    generator: Optional[torch.Generator],
    routing: str = "uniform_k_subset",
    row_seeds: Optional[Sequence[int]] = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-matrix version of `stochastic_masks_flat`: ci name -> g [..., C]; returns (masks, Δ masks)."""
    layout = FlatLayout.of(ci)
    m, dm = stochastic_masks_flat(layout.cat(ci), layout, generator, routing, row_seeds)
    return layout.split(m), layout.split_delta(dm)


def constant_masks(ci: Mapping[str, torch.Tensor], value: float) -> dict[str, torch.Tensor]:
    return {n: torch.full_like(g, value) for n, g in ci.items()}
