"""The two output comparisons of every stage, per position, in fp32 nats: KL(p || q) between
next-token distributions given by logits, and cross-entropy of logits against token ids.

KL(p || q) = Σ p log p - Σ p log q. Against a fixed p (the target's, the unedited model's) the
first sum is a per-position constant, so `KLTarget` computes it once and each compared model
needs only its log-softmax and one weighted sum. p is detached: gradients flow through q only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class KLTarget:
    """KL(p || ·) against the distribution p of `target_logits` [..., V], prepared once."""

    def __init__(self, target_logits: torch.Tensor):
        log_p = F.log_softmax(target_logits.detach().float(), dim=-1)
        self.p = log_p.exp()  # [..., V]
        self.neg_entropy = (self.p * log_p).sum(-1)  # [...]

    def __getitem__(self, index) -> "KLTarget":
        """The same p at the leading-dimension positions `index` (e.g. a minibatch of windows)."""
        rows = object.__new__(KLTarget)
        rows.p, rows.neg_entropy = self.p[index], self.neg_entropy[index]
        return rows

    def per_token(self, logits: torch.Tensor) -> torch.Tensor:
        """KL(p || q) per position for q given by `logits` [..., V] -> [...]."""
        return self.per_token_log_q(F.log_softmax(logits.float(), dim=-1))

    def per_token_log_q(self, log_q: torch.Tensor) -> torch.Tensor:
        """KL(p || q) per position for q given by its log-probabilities [..., V] -> [...]."""
        return self.neg_entropy - (self.p * log_q).sum(-1)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean KL over positions (the training loss)."""
        return self.per_token(logits).mean()


def kl_per_token(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position: [..., V] x2 -> [...]; p is the reference (detached)."""
    return KLTarget(p_logits).per_token(q_logits)


def ce_per_token(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `logits` [..., V] against ids `targets` [...] -> [...]."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return flat.reshape(targets.shape)


def next_token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits[:, :-1] against ids[:, 1:] (within each sequence)."""
    return ce_per_token(logits[:, :-1], ids[:, 1:]).mean()
