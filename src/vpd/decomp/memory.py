"""Peak memory per process of a decomposition, for the up-front refusal (`vpd.utils.memory.check_memory`).

Parameter, gradient and AdamW-moment bytes are exact (modules built on the meta device);
activations are bytes saved for backward per local token times a peak factor, local tokens being
(batch_size // world_size) * seq_len.

Saved-for-backward bytes per token of the batch (the masked forward runs on the doubled batch),
counted at config/config.yaml's decomposition and split by tensor shape at a shape with distinct
odd widths: 52 ΣC (seven fp32 [tokens, ΣC] tensors: CI pre-activation and both read-outs, the
minimality power sums, the stochastic and adversarial masks; plus three [2 tokens, C] tensors per
matrix inside the masked forward), 2 n_layer (52 d + 12 d_mlp) for the masked target trunk, 12 V
for the target distribution and both halves' log-softmax, 4 Σd_in for the CI function's input,
n_blocks (36 d_ci + 8 d_mlp_ci) for its blocks (measured 457.5 kB/token + 23 MiB fixed, formula
455.7 kB). The estimate adds what is alive but not saved: the clean logits (4 V) and the captured
matrix inputs (4 Σd_in).

The peak factor was calibrated on CPU peak RSS (`/usr/bin/time -v`, torch 2.13, 1-2 threads) of a
few steps: 8 x 128 tokens 1363 MiB fp32 / 1229-1315 MiB bf16 after 3 steps (1.41 / 1.36 GB after
20 in benchmarks/RESULTS.md); 4 x 128 841 MiB fp32, i.e. 2.15-2.3x -> DECOMP_PEAK_FACTOR 2.5. The
formulas count fp32 activations, so bf16 runs are over-estimated by up to ~25%.
"""

from __future__ import annotations

from typing import Optional

import torch

from vpd.decomp.ci_functions import build_ci_function
from vpd.decomp.components import match_matrices
from vpd.target.memory import meta_target
from vpd.utils.memory import FP32, MemoryEstimate, local_batch, n_params, runtime_part

DECOMP_PEAK_FACTOR = 2.5
# SDPA's math kernel (the CI function on CPU in bf16) saves [H, T] attention rows per token.
MATH_ATTENTION_BYTES_PER_HEAD_POSITION = 20


def estimate_decomposition_bytes(
    model_cfg,
    decomp_cfg,
    world_size: Optional[int] = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MemoryEstimate:
    """Peak bytes per rank of a decomposition of the target `model_cfg` with `decompose:` config `decomp_cfg`."""
    world_size = world_size or decomp_cfg.world_size
    target = meta_target(model_cfg)
    modules = dict(target.named_modules())
    C = match_matrices(target, decomp_cfg.matrices)
    d_in = {n: modules[n].in_features for n in C}
    d_out = {n: modules[n].out_features for n in C}
    with torch.device("meta"):
        ci_fn = build_ci_function(d_in, C, decomp_cfg.ci_fn)
    n_trained = sum(c * (d_in[n] + d_out[n]) for n, c in C.items()) + n_params(ci_fn)  # V, U and the CI function
    total_c, n_mats = sum(C.values()), len(C)

    seq_len = decomp_cfg.seq_len or model_cfg.context
    tokens = local_batch(decomp_cfg.batch_size, world_size) * seq_len
    d, d_mlp = model_cfg.d_model, model_cfg.d_mlp
    other_per_token = (
        2 * model_cfg.n_layer * (52 * d + 12 * d_mlp)  # masked target trunk over the doubled batch
        + 16 * model_cfg.vocab_size  # clean logits, target probabilities, two log-softmaxes
        + 8 * sum(d_in.values())  # captured matrix inputs and the CI function's concatenated input
    )
    ci = decomp_cfg.ci_fn
    if ci.kind == "global_transformer":
        other_per_token += ci.n_blocks * (36 * ci.d_model + 8 * ci.d_mlp)
        if torch.device(device).type == "cpu" and dtype == torch.bfloat16:  # the CI function uses SDPA's math kernel
            other_per_token += ci.n_blocks * MATH_ATTENTION_BYTES_PER_HEAD_POSITION * ci.n_heads * seq_len
    else:
        other_per_token += 12 * n_mats * sum(ci.hidden)
    parts = {
        **runtime_part(device),
        "target_weights": FP32 * n_params(target),
        "parameters": FP32 * n_trained,
        "gradients": FP32 * n_trained,
        "adamw_moments": 2 * FP32 * n_trained,
    }
    if decomp_cfg.coeffs.adversarial_recon > 0:
        parts["adversary_sources"] = 3 * FP32 * tokens * (total_c + n_mats)  # sources + 2 Adam moments
    parts["flat_ci_masks"] = int(DECOMP_PEAK_FACTOR * 52 * total_c * tokens)
    parts["activations"] = int(DECOMP_PEAK_FACTOR * other_per_token * tokens)
    return MemoryEstimate(
        parts, f"{tokens} tokens per rank, ΣC {total_c} over {n_mats} matrices, world_size {world_size}"
    )
