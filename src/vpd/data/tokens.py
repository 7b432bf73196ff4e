"""Token shards: a flat `uint16` memmap of token ids (documents joined by the end-of-text token).

Training draws random windows with a seeded `torch.Generator`; evaluation uses fixed,
evenly spaced windows so every stage (target curve, VPD eval, baselines) scores the same tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class TokenShard:
    def __init__(self, path: str | Path, seq_len: int):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"token shard {path} does not exist (run the tokenizer stage first)")
        self.path = path
        self.tokens = np.memmap(path, dtype=np.uint16, mode="r")
        self.seq_len = seq_len
        if len(self.tokens) < seq_len + 2:
            raise ValueError(f"token shard {path} has {len(self.tokens)} tokens, fewer than seq_len+2 = {seq_len + 2}")

    def __len__(self) -> int:
        return len(self.tokens)

    def _windows(self, starts: np.ndarray) -> torch.Tensor:
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        return torch.from_numpy(self.tokens[idx].astype(np.int64))  # [B, seq_len + 1]

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Random windows of seq_len+1 tokens (inputs = [:, :-1], next-token targets = [:, 1:])."""
        high = len(self.tokens) - self.seq_len - 1
        starts = torch.randint(0, high, (batch_size,), generator=generator).numpy()
        return self._windows(starts)

    def eval_windows(self, n_sequences: int) -> torch.Tensor:
        """`n_sequences` fixed windows spread evenly over the shard: [n, seq_len + 1]."""
        high = len(self.tokens) - self.seq_len - 1
        n = min(n_sequences, max(1, high // max(1, self.seq_len)))
        starts = np.linspace(0, high, num=n, dtype=np.int64)
        return self._windows(starts)


def eval_windows(cfg, tokens_dir: str | Path, context: int) -> torch.Tensor:
    """The shared held-out windows [N, context + 1] of every evaluation (VPD, transcoders, splitting):
    `evaluate.eval_sequences` windows of val.bin, or the target curve's `target.train.eval_sequences`."""
    n = cfg.evaluate.eval_sequences or cfg.target.train.eval_sequences
    return TokenShard(Path(tokens_dir) / "val.bin", context).eval_windows(n)
