"""Peak memory per process of target training, for the up-front refusal (`vpd.utils.memory.check_memory`).

Parameter, gradient and AdamW-moment bytes are exact (the model built on the meta device);
activations are bytes saved for backward per local token times a peak factor, local tokens being
(batch_size // world_size) * context.

Saved-for-backward bytes per local token, counted (fp32, autograd saved-tensor hooks, deduplicated
by storage) at config/config.yaml's target: n_layer * (36 d + 8 d_mlp) + 16 d (measured 38.5
kB/token, formula 36.9 kB). The peak factor was calibrated on CPU peak RSS (`/usr/bin/time -v`,
torch 2.13, 1-2 threads): 32 x 128 tokens 671 MiB fp32 / 657-752 MiB bf16; 64 x 128 1124 MiB fp32
/ 1005 MiB bf16, i.e. 2.45-2.85x the saved bytes -> TARGET_PEAK_FACTOR 3.0.
"""

from __future__ import annotations

from typing import Optional

import torch

from vpd.target.loss import CHUNK_BYTES
from vpd.target.model import TargetLM
from vpd.utils.memory import FP32, MemoryEstimate, local_batch, n_params, runtime_part

TARGET_PEAK_FACTOR = 3.0


def meta_target(model_cfg) -> TargetLM:
    """The target built on the meta device: shapes and parameter counts, no memory."""
    with torch.device("meta"):
        return TargetLM(model_cfg)


def estimate_target_training_bytes(
    model_cfg, train_cfg, world_size: Optional[int] = None, *, device: torch.device | str = "cpu"
) -> MemoryEstimate:
    """Peak bytes per rank of target training (`target.model`, `target.train`)."""
    world_size = world_size or train_cfg.world_size
    n_weights = n_params(meta_target(model_cfg))
    d, d_mlp = model_cfg.d_model, model_cfg.d_mlp
    tokens = local_batch(train_cfg.batch_size, world_size) * model_cfg.context
    saved_per_token = model_cfg.n_layer * (36 * d + 8 * d_mlp) + 16 * d
    parts = {
        **runtime_part(device),
        "parameters": FP32 * n_weights,
        "gradients": FP32 * n_weights,
        "adamw_moments": 2 * FP32 * n_weights,
        "activations": int(TARGET_PEAK_FACTOR * saved_per_token * tokens),
        # fused unembedding + CE: fp32 grad of the tied embedding twice, a few logit chunks
        "unembedding_workspace": 2 * FP32 * model_cfg.vocab_size * d + 4 * CHUNK_BYTES,
    }
    return MemoryEstimate(parts, f"{tokens} tokens per rank, world_size {world_size}")
