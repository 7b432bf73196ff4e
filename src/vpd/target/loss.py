"""Next-token cross-entropy fused with the (tied) unembedding, computed in row chunks.

`F.cross_entropy(h @ W.T, y)` materialises [N, V] logits, their log-softmax, and in backward a
zero-filled [N, V] gradient and a second [N, V] buffer: at N = 4096 tokens and V = 4096 that is
four 64 MB buffers per step, each freshly mapped (and page-faulted) by the allocator. On CPU this
took about half of a training step at the default size. Here each chunk of rows computes its
logits, loss and logit gradient while they are in cache, and the gradients with respect to h and
W are accumulated during the forward pass (the loss is a scalar, so backward only rescales them).
Same FLOPs, same maths; results equal the unfused loss up to float rounding.
"""

from __future__ import annotations

import torch

# Rows per chunk are chosen so a chunk's fp32 logits take about this many bytes.
CHUNK_BYTES = 4 << 20


def _compute_dtype(device_type: str) -> torch.dtype:
    """The autocast dtype in force (the matmuls below run in it), else fp32."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.float32


def _chunks(n: int, vocab: int) -> range:
    return range(0, n, max(1, CHUNK_BYTES // (4 * vocab)))


class _FusedUnembedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype):
        # h [N, C], weight [V, C], targets [N] -> mean CE (fp32 scalar)
        n, vocab = h.shape[0], weight.shape[0]
        w = weight.to(dtype)  # [V, C]
        grad_h = torch.empty(h.shape, dtype=h.dtype, device=h.device)  # [N, C]
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)  # [V, C]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        rows = _chunks(n, vocab)
        for start in rows:
            hc = h[start : start + rows.step].to(dtype)  # [n_c, C]
            yc = targets[start : start + rows.step, None]  # [n_c, 1]
            logp = torch.log_softmax((hc @ w.T).float(), dim=-1)  # [n_c, V], one fused kernel
            total -= logp.gather(1, yc).sum()
            # d(sum CE)/d logits = softmax - onehot, built in place; the 1/N comes after the loop.
            probs = logp.exp_()
            probs.scatter_add_(1, yc, torch.full(yc.shape, -1.0, device=h.device))
            g = probs.to(dtype)  # [n_c, V]
            grad_h[start : start + rows.step] = g @ w  # [n_c, C]
            grad_w += (g.T @ hc).float()  # [V, C]
        grad_h.div_(n)
        grad_w.div_(n)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None


@torch.no_grad()
def _unembed_ce_no_grad(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n, vocab = h.shape[0], weight.shape[0]
    w = weight.to(dtype)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    rows = _chunks(n, vocab)
    for start in rows:
        hc, yc = h[start : start + rows.step].to(dtype), targets[start : start + rows.step]
        logits = (hc @ w.T).float()  # [n_c, V]
        total += (torch.logsumexp(logits, dim=-1) - logits.gather(1, yc[:, None]).squeeze(1)).sum()
    return total / n


def unembed_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE of logits h @ weight.T against targets; h [..., C], weight [V, C], targets [...].

    Equals `F.cross_entropy((h @ weight.T).float().flatten(0, -2), targets.flatten())`, with the
    matmuls in the autocast dtype when autocast is on, and the softmax and the loss in fp32.
    """
    dtype = _compute_dtype(h.device.type)
    h2, y = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    with torch.autocast(h.device.type, enabled=False):
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            return _FusedUnembedCE.apply(h2, weight, y, dtype)
        return _unembed_ce_no_grad(h2, weight, y, dtype)
