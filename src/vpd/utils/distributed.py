"""Multi-process training under torchrun: the process group, batch sharding and reductions.

`Dist` describes this process's place in a run (rank, world size, device). With world size 1
every method is a no-op, so the training loops call them unconditionally.

World-size invariance, the property the 1-vs-N process test checks:
- every rank draws the same *global* batch from the shared data generator and keeps its own
  contiguous block of rows (`shard`), so N processes train on exactly the batches one would;
- randomness that is drawn per batch row (stochastic masks, adversary init) is keyed by the
  row's *global* index (`row_seeds`), not by the rank;
- gradients are averaged over ranks, and any gradient of a per-rank leaf (the persistent
  adversary's sources) is divided by the world size, since each rank's loss is a mean over
  1/N of the tokens.
N-process runs therefore match 1-process runs up to float summation order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from vpd.utils.errors import UserError


class DistributedConfigError(UserError, ValueError):
    """The config's world_size and the way the process was launched disagree."""


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=_default_device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------ sharding
    def rows(self, n: int, *, even: bool = True) -> slice:
        """This rank's contiguous block of n global rows. even=True requires n % world_size == 0
        (training batches: every rank's mean must weigh equally); else blocks differ by <= 1."""
        if even and n % self.world_size:
            raise DistributedConfigError(f"{n} batch rows do not split evenly over world_size {self.world_size}")
        start = self.rank * n // self.world_size
        return slice(start, (self.rank + 1) * n // self.world_size)

    def shard(self, batch, *, even: bool = True):
        """This rank's rows of a global batch (first dim); batch unchanged with one process."""
        if not self.active:
            return batch
        if not torch.is_tensor(batch):
            raise DistributedConfigError("multi-process runs need tensor batches (the first dim is split over ranks)")
        return batch[self.rows(batch.shape[0], even=even)]

    # ------------------------------------------------------------ reductions
    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place mean over ranks (equal-weight: for means over equal shards)."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world_size)
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def mean_values(self, values: Sequence[float]) -> list[float]:
        """Mean over ranks of a list of Python floats (one collective for the whole list)."""
        if not self.active:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        return self.mean_(t).tolist()

    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.active:
            dist.broadcast(t, src)
        return t

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's equal-shaped block along dim 0 (on every rank)."""
        if not self.active:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, 0)

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace each parameter's gradient by its mean over ranks, in one flat all-reduce
        (what DistributedDataParallel's buckets do; a VPD step runs several forwards per
        backward, which DDP's module wrapper does not support). A missing gradient counts as 0."""
        if not self.active:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self.mean_(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 for a plain `python -m vpd`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(world_size: int, key: str) -> Dist:
    """The Dist for a stage whose config asks for `world_size` processes (`key` names that
    setting in errors). Under torchrun: joins the process group (nccl on GPU, gloo on CPU)."""
    launched = launched_world_size()
    if launched != world_size:
        hint = (
            f"launch with `torchrun --standalone --nproc_per_node {world_size} -m vpd ...` (the Snakemake rules do)"
            if world_size > 1 else "run it without torchrun"
        )
        raise DistributedConfigError(
            f"{key} is {world_size} but this process was started with WORLD_SIZE={launched}: {hint}, or set {key}: {launched}"
        )
    if world_size == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def row_seeds(seed: int, purpose: int, step: int, rows: range | slice | Sequence[int]) -> list[int]:
    """One 63-bit seed per global batch row, for per-row random draws that do not depend on how
    the rows are split over ranks. `purpose` separates independent streams."""
    if isinstance(rows, slice):
        rows = range(rows.start, rows.stop)
    return [int(np.random.SeedSequence([seed, purpose, step, r]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)
            for r in rows]


def rand_rows(row_shape: Sequence[int], seeds: Sequence[int], device: torch.device) -> torch.Tensor:
    """U(0,1) [len(seeds), *row_shape] in fp32, row i drawn from a generator seeded seeds[i]."""
    gen = torch.Generator(device=device)
    out = []
    for s in seeds:
        gen.manual_seed(s)
        out.append(torch.rand(tuple(row_shape), generator=gen, device=device, dtype=torch.float32))
    return torch.stack(out)
