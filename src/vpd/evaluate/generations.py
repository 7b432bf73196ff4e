"""The generations showcase: greedy continuations of a few prompts by the target and by the
decomposition under each mask strategy (the paper's fig:generations-showcase).

Every step recomputes the CI of the whole prefix and draws the strategy's masks afresh (PGD-20:
a fresh 20-step attack on the prefix against the target's logits), then appends the argmax of the
last position, so each continuation is what that masked model would write on its own.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import pandas as pd
import torch

from vpd.evaluate.mask_strategies import DecompositionLike, MaskFn, pgd_ascent
from vpd.utils.runtime import autocast

NextLogits = Callable[[torch.Tensor], torch.Tensor]  # prefix [1, t] -> logits of the next token [V]

# Strategies of the showcase, by their name in mask_strategies.standard_strategies.
SHOWCASE = {"unmasked": "unmasked", "stochastic": "stochastic", "rounded_ci>0": "rounded", "ci_as_masks": "CI-masked"}


@torch.no_grad()
def greedy(next_logits: NextLogits, prompt: Sequence[int], n_new: int, context: int) -> list[int]:
    """`n_new` greedy tokens after `prompt`, each from the last `context` tokens of the prefix."""
    ids = list(prompt)
    for _ in range(n_new):
        x = torch.tensor([ids[-context:]], dtype=torch.long)
        ids.append(int(next_logits(x).argmax()))
    return ids[len(prompt):]


def showcase_models(
    decomp: DecompositionLike, target: torch.nn.Module, strategies: Mapping[str, MaskFn], *,
    pgd_steps: int, pgd_step_size: float, seed: int, dtype: torch.dtype,
) -> dict[str, NextLogits]:
    """Next-token functions of the target, of each showcase strategy and of PGD-`pgd_steps`."""
    device = next(target.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)

    def target_logits(x):
        with autocast(device, dtype):
            return target(x.to(device)).float()

    def masked(fn: MaskFn) -> NextLogits:
        def next_logits(x):
            x = x.to(device)
            masks, dmasks = fn(decomp.ci(x), gen)
            return decomp.masked_forward(x, masks, dmasks).float()[0, -1]
        return next_logits

    def pgd(x):
        x = x.to(device)
        *_, (_, _, logits, _, _) = pgd_ascent(decomp, x, target_logits(x), steps=pgd_steps, step_size=pgd_step_size,
                                             generator=gen)
        return logits.float()[0, -1]

    models: dict[str, NextLogits] = {"target": lambda x: target_logits(x)[0, -1]}
    models.update({label: masked(strategies[name]) for name, label in SHOWCASE.items() if name in strategies})
    models[f"PGD-{pgd_steps}"] = pgd
    return models


def generations_table(
    models: Mapping[str, NextLogits], prompts: Sequence[str], encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str], *, n_new: int, context: int,
) -> pd.DataFrame:
    """One row per (prompt, model): prompt, model, continuation (decoded text), agrees_with_target
    (fraction of the new tokens equal to the target's)."""
    rows = []
    for prompt in prompts:
        ids = encode(prompt)
        if not ids:
            raise ValueError(f"generation prompt {prompt!r} encodes to no tokens")
        outs = {name: greedy(fn, ids, n_new, context) for name, fn in models.items()}
        ref = outs.get("target")
        for name, new in outs.items():
            agree = sum(a == b for a, b in zip(new, ref)) / len(new) if ref is not None and new else float("nan")
            rows.append({"prompt": prompt, "model": name, "continuation": decode(new), "agrees_with_target": agree})
    return pd.DataFrame(rows, columns=["prompt", "model", "continuation", "agrees_with_target"])


def generations_markdown(table: pd.DataFrame) -> str:
    """The showcase as one markdown table per prompt (model | continuation | agreement with the target)."""
    parts = ["# Generations showcase\n\nGreedy continuations; agreement = share of new tokens equal to the target's.\n"]
    for prompt, g in table.groupby("prompt", sort=False):
        parts.append(f"\n## \"{prompt}\"\n\n| model | continuation | agreement |\n|---|---|---|")
        for r in g.itertuples():
            text = r.continuation.replace("|", "\\|").replace("\n", "⏎")
            parts.append(f"| {r.model} | {text} | {r.agrees_with_target:.2f} |")
    return "\n".join(parts) + "\n"
