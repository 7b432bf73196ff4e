"""CE and KL of a decomposition under each mask strategy, and the PGD evaluation attack.

Works with any object that has the `Decomposition` API (duck-typed, see `DecompositionLike`):
`ci(batch) -> {name: g [B, T, C]}` and `masked_forward(batch, masks, delta_masks) -> logits`.
A matrix missing from `masks` runs its original weight; a Δ mask of 0 drops Δ.

Strategies (Δ excluded, m_Δ = 0, in all but the one that says otherwise):
  unmasked        m = 1
  stochastic      m = g + (1 - g) r, r ~ U(0, 1) per (token, c)
  stochastic_with_delta   as stochastic, and m_Δ ~ U(0, 1) per token (as in training)
  rounded_ci>τ    m = 1[g > τ]
  ci_as_masks     m = g
  random          m = r
  zero            m = 0
Random draws come from one seeded generator consumed in a fixed order, so results are exact
functions of (decomposition, windows, seed).

PGD eval: one source per subcomponent and Δ, shared across the batch ([1, 1, C + 1] per matrix),
r ~ U(0, 1), masks m = g + (1 - g) r[:C] and m_Δ = r[C] on all matrices at once; sign ascent of
the mean KL with step 0.1 and clamping to [0, 1]; KL recorded after each requested number of
steps of one continuous attack.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping, Optional, Protocol

import numpy as np
import pandas as pd
import torch

from vpd.evaluate.metrics import CIAccumulator
from vpd.utils.meters import MeanMeter
from vpd.utils.divergence import ce_per_token, kl_per_token
from vpd.utils.runtime import autocast

Masks = dict[str, torch.Tensor]
MaskFn = Callable[[Mapping[str, torch.Tensor], torch.Generator], tuple[Masks, Optional[Masks]]]


class DecompositionLike(Protocol):
    def ci(self, batch: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def masked_forward(
        self, batch: torch.Tensor, masks: Mapping[str, torch.Tensor], delta_masks: Optional[Mapping[str, torch.Tensor]] = None
    ) -> torch.Tensor: ...


# ---------------------------------------------------------------- strategies
def _rand(g: torch.Tensor, gen: torch.Generator, shape=None) -> torch.Tensor:
    return torch.rand(g.shape if shape is None else shape, generator=gen, device=g.device, dtype=torch.float32)


def _no_delta(ci: Mapping[str, torch.Tensor]) -> Masks:
    return {n: torch.zeros(g.shape[:-1], device=g.device) for n, g in ci.items()}


def rounded_name(tau: float) -> str:
    return f"rounded_ci>{tau:g}"


def standard_strategies(thresholds: Iterable[float] = (0.0, 0.1, 0.5)) -> dict[str, MaskFn]:
    """The named mask strategies of the paper's table (Δ dropped) plus stochastic_with_delta."""

    def unmasked(ci, gen):
        return {n: torch.ones_like(g) for n, g in ci.items()}, _no_delta(ci)

    def stochastic(ci, gen):
        return {n: g + (1 - g) * _rand(g, gen) for n, g in ci.items()}, _no_delta(ci)

    def stochastic_with_delta(ci, gen):
        masks = {n: g + (1 - g) * _rand(g, gen) for n, g in ci.items()}
        return masks, {n: _rand(g, gen, g.shape[:-1]) for n, g in ci.items()}

    def rounded(tau: float) -> MaskFn:
        return lambda ci, gen: ({n: (g > tau).float() for n, g in ci.items()}, _no_delta(ci))

    def ci_as_masks(ci, gen):
        return {n: g.float() for n, g in ci.items()}, _no_delta(ci)

    def random(ci, gen):
        return {n: _rand(g, gen) for n, g in ci.items()}, _no_delta(ci)

    def zero(ci, gen):
        return {n: torch.zeros_like(g) for n, g in ci.items()}, _no_delta(ci)

    out: dict[str, MaskFn] = {"unmasked": unmasked, "stochastic": stochastic}
    out.update({rounded_name(t): rounded(float(t)) for t in thresholds})
    out.update({"ci_as_masks": ci_as_masks, "random": random, "zero": zero, "stochastic_with_delta": stochastic_with_delta})
    return out


def source_name(r: float) -> str:
    return f"source_{r:g}"


def fixed_source(r: float) -> MaskFn:
    """Every subcomponent at mask CI + (1 - CI) r and Δ at r: r = 1 is the target's weights, r = 0
    keeps each subcomponent only as far as its CI says (the adversary-vs-no-adversary comparison)."""

    def masks(ci, gen):
        return ({n: g + (1 - g) * r for n, g in ci.items()},
                {n: torch.full(g.shape[:-1], float(r), device=g.device) for n, g in ci.items()})

    return masks


def restrict(fn: MaskFn, keep: Callable[[str], bool]) -> MaskFn:
    """Apply `fn` only to matrices with keep(name); the others run their original weight."""

    def restricted(ci, gen):
        return fn({n: g for n, g in ci.items() if keep(n)}, gen)

    return restricted


# ---------------------------------------------------------------- evaluation over windows
def _device_of(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def iter_batches(windows: torch.Tensor, batch_size: int, device: torch.device):
    """(inputs [b, T], next-token targets [b, T]) of consecutive chunks of windows [N, T + 1]."""
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size].to(device)
        yield chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def evaluate_masks(
    decomp: DecompositionLike,
    target: torch.nn.Module,
    windows: torch.Tensor,
    strategies: Mapping[str, MaskFn],
    *,
    batch_size: int,
    seed: int = 0,
    thresholds: Iterable[float] = (0.0,),
    dtype: torch.dtype = torch.float32,
) -> tuple[pd.DataFrame, CIAccumulator]:
    """CE and KL to the target of each strategy on windows [N, T + 1], plus the CI statistics.

    Returns (table with one row per strategy, first row "target": strategy, ce, kl, n_tokens;
    a CIAccumulator over the same tokens with the given L0 thresholds).
    """
    device = _device_of(target)
    gen = torch.Generator(device=device).manual_seed(seed)
    acc = CIAccumulator(thresholds)
    ce = {name: MeanMeter() for name in ["target", *strategies]}
    kl = {name: MeanMeter() for name in ["target", *strategies]}
    for x, y in iter_batches(windows, batch_size, device):
        with autocast(device, dtype):
            t_logits = target(x).float()  # [b, T, V]
        ce["target"].update(ce_per_token(t_logits, y))
        kl["target"].update(torch.zeros_like(y, dtype=torch.float32))
        ci = decomp.ci(x)  # name -> [b, T, C]
        acc.update(ci)
        for name, fn in strategies.items():
            masks, dmasks = fn(ci, gen)
            logits = decomp.masked_forward(x, masks, dmasks).float()
            ce[name].update(ce_per_token(logits, y))
            kl[name].update(kl_per_token(t_logits, logits))
    rows = [{"strategy": n, "ce": ce[n].mean, "kl": kl[n].mean, "n_tokens": ce[n].count} for n in ce]
    return pd.DataFrame(rows, columns=["strategy", "ce", "kl", "n_tokens"]), acc


# ---------------------------------------------------------------- PGD evaluation
def pgd_ascent(
    decomp: DecompositionLike,
    x: torch.Tensor,
    target_logits: torch.Tensor,
    *,
    steps: int,
    step_size: float = 0.1,
    generator: Optional[torch.Generator] = None,
    ci: Optional[Mapping[str, torch.Tensor]] = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, Masks, Masks]]:
    """One continuous sign-ascent attack on batch x, as (step, mean KL, model logits, masks, Δ masks)
    after 0, 1, ..., `steps` ascent steps.

    Sources r [1, .., 1, C + 1] per matrix are shared by every token of the batch; the last
    channel is Δ's mask. Only the sources receive gradients (autograd.grad), so nothing else
    accumulates .grad.
    """
    ci = decomp.ci(x) if ci is None else ci
    ci = {n: g.detach().float() for n, g in ci.items()}
    sources = {
        n: torch.rand((*([1] * (g.dim() - 1)), g.shape[-1] + 1), generator=generator, device=g.device).requires_grad_(True)
        for n, g in ci.items()
    }
    target_logits = target_logits.detach().float()
    for step in range(steps + 1):
        with torch.enable_grad():
            masks = {n: g + (1 - g) * sources[n][..., :-1] for n, g in ci.items()}  # [b, T, C]
            dmasks = {n: sources[n][..., -1].expand(g.shape[:-1]) for n, g in ci.items()}  # [b, T]
            logits = decomp.masked_forward(x, masks, dmasks)
            loss = kl_per_token(target_logits, logits).mean()
        yield step, loss.detach(), logits.detach(), {n: m.detach() for n, m in masks.items()}, \
            {n: m.detach() for n, m in dmasks.items()}
        if step == steps:
            return
        grads = torch.autograd.grad(loss, list(sources.values()))
        with torch.no_grad():
            for r, grad in zip(sources.values(), grads):
                r.add_(step_size * grad.sign()).clamp_(0.0, 1.0)


def pgd_attack(
    decomp: DecompositionLike,
    x: torch.Tensor,
    target_logits: torch.Tensor,
    *,
    steps: Iterable[int] = (20, 40, 80, 160, 320),
    step_size: float = 0.1,
    generator: Optional[torch.Generator] = None,
    ci: Optional[Mapping[str, torch.Tensor]] = None,
) -> dict[int, float]:
    """Mean KL after each requested step count of one continuous `pgd_ascent` on batch x."""
    record = sorted(set(int(s) for s in steps))
    return {step: loss.item() for step, loss, *_ in pgd_ascent(
        decomp, x, target_logits, steps=record[-1], step_size=step_size, generator=generator, ci=ci) if step in record}


def evaluate_pgd(
    decomp: DecompositionLike,
    target: torch.nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int,
    n_batches: int,
    steps: Iterable[int] = (20, 40, 80, 160, 320),
    step_size: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> pd.DataFrame:
    """PGD KL per attacked batch and step count (columns batch, steps, kl), fresh sources per batch.

    The first `n_batches` chunks of the windows are attacked; aggregate with `summarise_pgd`.
    """
    device = _device_of(target)
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for b, (x, _) in enumerate(iter_batches(windows, batch_size, device)):
        if b >= n_batches:
            break
        with torch.no_grad(), autocast(device, dtype):
            t_logits = target(x).float()
        for s, kl in pgd_attack(decomp, x, t_logits, steps=steps, step_size=step_size, generator=gen).items():
            rows.append({"batch": b, "steps": s, "kl": kl})
    return pd.DataFrame(rows, columns=["batch", "steps", "kl"])


def summarise_pgd(per_batch: pd.DataFrame, zero_ablation_kl: Optional[float] = None) -> pd.DataFrame:
    """Per step count over the attacked batches: mean KL, its standard error (sample std / sqrt(n);
    NaN for one batch), min, max and n; plus a "zero_ablation" row (one number, no spread) if given."""
    g = per_batch.groupby("steps")["kl"]
    out = pd.DataFrame({"kl_mean": g.mean(), "kl_sem": g.std(ddof=1) / np.sqrt(g.size()), "kl_min": g.min(),
                        "kl_max": g.max(), "n_batches": g.size()}).reset_index()
    out["steps"] = out["steps"].astype(str)
    if zero_ablation_kl is not None:
        zero = {"steps": "zero_ablation", "kl_mean": zero_ablation_kl, "kl_sem": float("nan"), "kl_min": zero_ablation_kl,
                "kl_max": zero_ablation_kl, "n_batches": 0}
        out = pd.concat([out, pd.DataFrame([zero])], ignore_index=True)
    return out
