"""Rank-one components of the target's weight matrices and the masked forward through them.

For each decomposed `nn.Linear` with weight W [d_out, d_in] we learn V [d_in, C] and U [C, d_out]
so that W = (V U)^T + Δ, where Δ = W - (V U)^T is derived, never a parameter. The masked forward
of one matrix at each position is

    y = ((x V) * m) U + m_Δ (x Δ^T) + bias,     m [..., C], m_Δ [...].

It is computed in the algebraically identical form

    y = ((x V) * (m - m_Δ)) U + m_Δ (x W^T) + bias,

because x W^T is exactly the output the target's own Linear computes: the engine wraps each
matrix with a forward hook that receives that output and adds the component term, so
Δ is never materialised in a forward pass and no [B, T, d_out, d_in] tensor ever exists. The
form also makes routing exact: with m = 1 and m_Δ = 1 the component term vanishes identically
and the hook returns the target's own output bit for bit, so "this token uses the original W"
is expressed as masks (see masks.py).

The target's parameters are frozen (requires_grad False) and never written; hooks exist only
inside the `hooked` / `capture_inputs` / `masked` context managers.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from typing import Iterator, Mapping, Optional

import torch
import torch.nn as nn

from vpd.decomp.config import MatrixSpec
from vpd.utils.errors import InputError


class MatrixComponents(nn.Module):
    """V [d_in, C] and U [C, d_out] of one matrix; the frozen target Linear is referenced, not owned."""

    def __init__(self, name: str, linear: nn.Linear, C: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        d_out, d_in = linear.weight.shape
        self.name, self.C, self.d_in, self.d_out = name, C, d_in, d_out
        # Held in a tuple so the target Linear is not registered as a submodule of the components.
        self._linear = (linear,)
        self.slot = _HookSlot()
        w = linear.weight
        # Paper init: V ~ N(0, 1/d_in), U ~ N(0, 1/C) (std = sqrt of the variance).
        self.V = nn.Parameter(torch.randn(d_in, C, generator=generator, dtype=torch.float32).to(w.device) / math.sqrt(d_in))
        self.U = nn.Parameter(torch.randn(C, d_out, generator=generator, dtype=torch.float32).to(w.device) / math.sqrt(C))

    @property
    def linear(self) -> nn.Linear:
        return self._linear[0]

    def forward_hook(self, mod: nn.Linear, args, out: torch.Tensor) -> Optional[torch.Tensor]:
        """The target Linear's forward hook (installed by `Components.hooked`)."""
        slot = self.slot
        if slot.store is not None:
            slot.store[self.name] = args[0].detach()
        if slot.mask is None:
            return None  # the target's own output
        return masked_output(self, args[0], out, slot.mask, slot.dmask, slot.detach, mod.bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight  # [d_out, d_in], frozen

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.linear.bias

    def delta(self) -> torch.Tensor:
        """Δ = W - (V U)^T  [d_out, d_in], in fp32."""
        return self.weight.float() - (self.V @ self.U).T


def match_matrices(target: nn.Module, specs: list[MatrixSpec]) -> dict[str, int]:
    """{module name: C} for every nn.Linear matched by the fnmatch patterns, in module order.

    A pattern matching no nn.Linear is an error listing the available names; a module matched by
    two patterns takes the C of the first.
    """
    linears = [name for name, mod in target.named_modules() if isinstance(mod, nn.Linear)]
    chosen: dict[str, int] = {}
    for spec in specs:
        hits = [n for n in linears if fnmatch.fnmatchcase(n, spec.pattern)]
        if not hits:
            raise InputError(
                f"decompose.matrices pattern {spec.pattern!r} matches no nn.Linear of the target; "
                f"available: {', '.join(linears) if linears else '(none)'}"
            )
        for n in hits:
            chosen.setdefault(n, spec.C)
    return {n: chosen[n] for n in linears if n in chosen}


class Components(nn.Module):
    """All decomposed matrices of one target, in the target's module order.

    `names` is the canonical matrix order used everywhere (masks, checkpoints, metrics).
    """

    def __init__(self, target: nn.Module, c_per_matrix: Mapping[str, int], generator: Optional[torch.Generator] = None):
        super().__init__()
        modules = dict(target.named_modules())
        self.names: list[str] = list(c_per_matrix)
        self.mats = nn.ModuleList()
        for name in self.names:
            mod = modules.get(name)
            if not isinstance(mod, nn.Linear):
                raise ValueError(f"{name!r} is not an nn.Linear of the target")
            self.mats.append(MatrixComponents(name, mod, int(c_per_matrix[name]), generator))
        self._by_name = {m.name: m for m in self.mats}
        self._hook_depth, self._handles = 0, []

    def __getitem__(self, name: str) -> MatrixComponents:
        return self._by_name[name]

    @property
    def C(self) -> dict[str, int]:
        return {m.name: m.C for m in self.mats}

    def component_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.mats for p in (m.V, m.U)]

    # ------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        """Install one forward hook per decomposed matrix for the duration (re-entrant).

        The hook does what its matrix's `_HookSlot` says: nothing, record the input, or run the
        masked components. The contexts below only fill the slots, so inside one outer `hooked()`
        (the trainer holds one for a whole run) the target's hooks never change, which keeps a
        compiled masked forward valid (api.py)."""
        if self._hook_depth == 0:
            self._handles = [m.linear.register_forward_hook(m.forward_hook) for m in self.mats]
        self._hook_depth += 1
        try:
            yield
        finally:
            self._hook_depth -= 1
            if self._hook_depth == 0:
                for h in self._handles:
                    h.remove()
                self._handles = []
                self.clear_masks()

    @contextlib.contextmanager
    def capture_inputs(self) -> Iterator[dict[str, torch.Tensor]]:
        """Within the context, each forward stores every matrix's input x [..., d_in] (detached)."""
        store: dict[str, torch.Tensor] = {}
        with self.hooked():
            for m in self.mats:
                m.slot.store = store
            try:
                yield store
            finally:
                for m in self.mats:
                    m.slot.store = None

    def set_masks(
        self,
        masks: Mapping[str, torch.Tensor],
        delta_masks: Optional[Mapping[str, torch.Tensor]] = None,
        detach_components: bool = False,
    ) -> None:
        """Make the (installed) hooks run the masked components; see `masked`."""
        for m in self.mats:
            slot = m.slot
            slot.mask = masks.get(m.name)
            slot.dmask = None if delta_masks is None else delta_masks.get(m.name)
            slot.detach = detach_components

    def clear_masks(self) -> None:
        for m in self.mats:
            m.slot.mask = m.slot.dmask = None

    @contextlib.contextmanager
    def masked(
        self,
        masks: Mapping[str, torch.Tensor],
        delta_masks: Optional[Mapping[str, torch.Tensor]] = None,
        detach_components: bool = False,
    ) -> Iterator[None]:
        """Within the context, forwards run the masked components.

        masks: name -> m [..., C]; matrices absent from `masks` run their original weight.
        delta_masks: name -> m_Δ [...]; None (or a missing name) means Δ excluded (m_Δ = 0).
        detach_components: use V, U without gradient (adversary ascents need only source grads).
        """
        with self.hooked():
            self.set_masks(masks, delta_masks, detach_components)
            try:
                yield
            finally:
                self.clear_masks()


class _HookSlot:
    """What a matrix's forward hook does on the next forward (filled by the Components contexts)."""

    def __init__(self):
        self.store: Optional[dict] = None  # record the input here
        self.mask: Optional[torch.Tensor] = None  # m [..., C]: run the masked components
        self.dmask: Optional[torch.Tensor] = None  # m_Δ [...]; None: Δ excluded
        self.detach = False  # V, U without gradient


def masked_output(m: MatrixComponents, x: torch.Tensor, out: torch.Tensor, mask: torch.Tensor,
                  dmask: Optional[torch.Tensor], detach: bool, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The masked matrix's output from its input x [..., d_in] and the target Linear's own output."""
    V, U = (m.V.detach(), m.U.detach()) if detach else (m.V, m.U)
    a = x @ V  # [..., C]; bf16 under bf16 autocast
    if dmask is None:
        # Δ excluded: y = ((x V) * m) U + bias; the hooked Linear's own output is not needed.
        y = (a * mask.to(a.dtype)) @ U
        return y if bias is None else y + bias
    md = dmask.unsqueeze(-1)  # [..., 1]
    # Masks are combined in fp32 and cast once to the matmul dtype (a no-op in fp32).
    y = (a * (mask - md).to(a.dtype)) @ U + md.to(out.dtype) * out  # out = x W^T + bias
    if bias is not None:
        y = y + (1 - md).to(y.dtype) * bias
    return y
