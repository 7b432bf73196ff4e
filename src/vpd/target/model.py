"""The target LM: a LLaMA-style decoder-only transformer, readable top to bottom.

token embedding -> n_layer x [pre-RMSNorm -> causal self-attention with RoPE -> residual,
pre-RMSNorm -> GELU MLP -> residual] -> final RMSNorm -> tied unembedding (h @ wte.weight.T).
No biases anywhere. The six weight matrices of each block are `nn.Linear` modules named
`h.{i}.attn.{q,k,v,o}_proj` and `h.{i}.mlp.{c_fc,down_proj}`; every use of their weights goes
through the module call, because the decomposition engine finds them by name and replaces their
output with forward hooks.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from vpd.config import TargetModelConfig
from vpd.target.loss import unembed_cross_entropy
from vpd.utils.errors import InputError
from vpd.utils.io import atomic_path, write_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MATRIX_NAMES = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.c_fc", "mlp.down_proj")
NORM_EPS = 1e-6


def matrix_names(n_layer: int) -> list[str]:
    """The decomposable matrices in forward order: `h.{i}.attn.q_proj`, ..., `h.{i}.mlp.down_proj`."""
    return [f"h.{i}.{m}" for i in range(n_layer) for m in MATRIX_NAMES]


# ---------------------------------------------------------------- rotary position embedding
def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq_len, head_dim] for the half-split (GPT-NeoX) rotary layout.

    Pair (x[j], x[j + head_dim/2]) is rotated by angle pos * base^(-2j/head_dim), so the dot
    product of a rotated query at position i and a rotated key at j depends only on i - j.
    Computed in float64 and stored in fp32 so the tables do not depend on the autocast dtype.
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [hd/2]
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    angles = torch.cat([angles, angles], dim=-1)  # [T, hd]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, hd] by the tables cos/sin [T, hd]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # rotate_half(x)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


# ---------------------------------------------------------------- blocks
class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TargetModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        # [B, T, C] -> [B, H, T, hd]
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        # On CPU, RoPE and attention run in fp32 even under bf16 autocast: the CPU bf16
        # flash-attention backward is ~5x slower than fp32's, and attention is < 10% of the FLOPs.
        fp32_attention = x.device.type == "cpu"
        if fp32_attention:
            q, k, v = q.float(), k.float(), v.float()
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        with torch.autocast(x.device.type, enabled=False) if fp32_attention else contextlib.nullcontext():
            y, att = self._attend(q, k, v, need_weights)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.o_proj(y), att

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Causal attention of q, k, v [B, H, T, hd] -> [B, H, T, hd] (+ probabilities [B, H, T, T])."""
        T = q.shape[-2]
        if need_weights:
            # Explicit softmax(QK^T / sqrt(hd)) for analysis; numerically the same as SDPA.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # [B, H, T, T]
            mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            att = scores.float().masked_fill(~mask, float("-inf")).softmax(dim=-1)  # [B, H, T, T]
            y = att.to(v.dtype) @ v  # [B, H, T, hd]
        else:
            att = None
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, hd]
        return y, att


class MLP(nn.Module):
    def __init__(self, cfg: TargetModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.down_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.c_fc(x)))  # [B, T, d_mlp] -> [B, T, C]


class Block(nn.Module):
    def __init__(self, cfg: TargetModelConfig):
        super().__init__()
        self.ln_1 = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, att = self.attn(self.ln_1(x), cos, sin, need_weights)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, att


# ---------------------------------------------------------------- the model
class TargetLM(nn.Module):
    def __init__(self, cfg: TargetModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        # RoPE tables are derived from the config, so they are not saved with the weights.
        cos, sin = rope_tables(cfg.context, cfg.d_model // cfg.n_head, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # [context, hd]
        self.register_buffer("rope_sin", sin, persistent=False)  # [context, hd]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02); residual-out projections scaled by 1/sqrt(2 n_layer) (GPT-2 style)."""
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = resid_std if name.endswith(("o_proj", "down_proj")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def _trunk(self, idx: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        B, T = idx.shape
        if T > self.cfg.context:
            raise ValueError(f"sequence length {T} exceeds the model's context {self.cfg.context}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.wte(idx)  # [B, T, C]
        patterns = []
        for block in self.h:
            x, att = block(x, cos, sin, need_weights)
            if att is not None:
                patterns.append(att)
        return self.ln_f(x), patterns

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Tied unembedding in fp32: [B, T, C] -> logits [B, T, V]."""
        return F.linear(h, self.wte.weight).float()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """idx [B, T] (int64) -> logits [B, T, V] (fp32).

        With `targets` [B, T], return the mean next-token cross-entropy (fp32 scalar) instead,
        computed without materialising the logits (see `vpd.target.loss`); training uses this.
        """
        h, _ = self._trunk(idx, need_weights=False)
        if targets is not None:
            return unembed_cross_entropy(h, self.wte.weight, targets)
        return self.unembed(h)

    @torch.no_grad()
    def attention_patterns(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, T, V] and attention probabilities [n_layer, B, n_head, T(query), T(key)].

        For analysis only: uses an explicit softmax instead of the fused kernel, so it is slower
        and uses O(T^2) memory per head; the logits equal `forward`'s up to float rounding.
        """
        h, patterns = self._trunk(idx, need_weights=True)
        return self.unembed(h), torch.stack(patterns)

    # ------------------------------------------------------------ sizes and cost
    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; `non_embedding` leaves out the (tied) token embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), the PaLM/nanoGPT estimate.

        6 * N counts a multiply-add as 2 FLOPs and backward as twice forward, where N is every
        matrix a token is multiplied by: the 24 block matrices plus the tied unembedding
        (V x d; the embedding lookup itself is free). The attention term 12 * n_layer * T * d
        covers QK^T and attention x V (2 * T * d each per layer forward, times 3), counted over
        the full T x T square even though the causal half is masked, as is conventional.
        """
        cfg = self.cfg
        T = seq_len or cfg.context
        n_matrix = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        n_matrix += cfg.vocab_size * cfg.d_model
        return 6 * n_matrix + 12 * cfg.n_layer * T * cfg.d_model

    # ------------------------------------------------------------ persistence
    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write `model.safetensors` (fp32 weights) and `config.json` atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        write_json(out_dir / CONFIG_FILE, self.cfg.model_dump(mode="json"))

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, map_location: str | torch.device = "cpu", expect: TargetModelConfig | None = None
    ) -> "TargetLM":
        """Load a model written by `save_pretrained`, checking config.json against the tensors and,
        with `expect` (the run config's `target.model`), against the config the caller runs under."""
        model_dir = Path(model_dir)
        cfg_path, weights_path = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
        for path in (cfg_path, weights_path):
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist (train the target first)")
        try:
            cfg = TargetModelConfig.model_validate(json.loads(cfg_path.read_text(encoding="utf-8")))
        except (ValueError, ValidationError) as exc:
            raise InputError(f"{cfg_path} is not a valid TargetModelConfig: {exc}") from exc
        if expect is not None and cfg != expect:
            found, wanted = cfg.model_dump(), expect.model_dump()
            diff = [f"{k} {found[k]} in {cfg_path}, {wanted[k]} in the config" for k in wanted if found[k] != wanted[k]]
            raise InputError(
                f"the target in {model_dir} differs from the config's target.model: " + "; ".join(diff)
                + " (retrain the target or fix the config)"
            )
        model = cls(cfg)
        try:
            tensors = load_file(str(weights_path))
        except Exception as exc:  # safetensors raises several error types for truncated or bad files
            raise InputError(f"{weights_path} cannot be read ({exc}): retrain the target or restore the file") from exc
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if expected != found:
            problems = [f"missing {k}" for k in expected.keys() - found.keys()]
            problems += [f"unexpected {k}" for k in found.keys() - expected.keys()]
            problems += [
                f"{k}: {found[k]} in weights, {expected[k]} from config"
                for k in sorted(expected.keys() & found.keys())
                if expected[k] != found[k]
            ]
            raise InputError(
                f"{weights_path} does not match {cfg_path}: " + "; ".join(sorted(problems)[:10])
                + (" ..." if len(problems) > 10 else "")
            )
        model.load_state_dict(tensors, strict=True)
        return model.to(map_location)


def load_target(target_dir: str | Path, device: torch.device | str = "cpu", expect: TargetModelConfig | None = None):
    """The trained target of a train_target folder, frozen in eval mode, and its `curve.csv`
    (a DataFrame); `expect` (the config's `target.model`) refuses a folder trained under another
    architecture."""
    import pandas as pd

    curve_path = Path(target_dir) / "curve.csv"
    if not curve_path.exists():
        raise FileNotFoundError(f"{curve_path} does not exist (run the train_target stage first)")
    target = TargetLM.from_pretrained(target_dir, map_location=device, expect=expect).eval()
    target.requires_grad_(False)
    return target, pd.read_csv(curve_path)
