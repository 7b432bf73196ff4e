"""The VPD optimisation loop: faithfulness warm-up, then the main loop with all four losses.

One main step on a batch:
  1. clean forward (no grad) capturing each matrix's input; CI function -> g_lower, g_upper;
  2. `n_warmup_ascents` adversary ascents (source gradients only: CI and components detached);
  3. Δ-L2 (Δ computed once), importance + frequency minimality, and ONE masked forward over the
     batch concatenated with itself: first half stochastic masks (k-subset routing), second half
     the adversary's masks (all matrices). The two halves are independent sequences, so this is
     the same two losses at half the launches and larger matmuls;
  4. total.backward() gives every gradient at once, including the sources' (they only enter the
     adversarial term, so their gradient / c_adv is the adversarial loss's source gradient);
  5. clip U, V gradients, AdamW step; then the third adversary ascent with the step-4 gradient.

Every loss term, per-matrix L0 and the number of subcomponents that fired in the logging window
go to metrics.jsonl; a short eval (monitor.py) runs every `eval_every` steps. Checkpoints hold
everything needed to resume bit-exactly. A non-finite loss stops the run naming step and term.

Multi-process (torchrun, utils/distributed.py): each rank takes its rows of the global batch,
the adversary keeps the sources of those rows, gradients of U, V and the CI function are
averaged after the backward, and the adversary's source gradients are divided by the world
size (each rank's loss averages 1/N of the tokens). Random draws are keyed by global batch row,
so N processes reproduce one process's run. Rank 0 writes metrics and checkpoints; a
checkpoint holds the whole batch's adversary state (gathered from the ranks).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.profiler import record_function
from tqdm import tqdm

from vpd.decomp import fused
from vpd.decomp.adversary import PersistentAdversary
from vpd.decomp.losses import (
    anneal_p,
    cosine_lr,
    faithfulness_loss,
    importance_minimality_loss,
    output_loss_fn,
    warmup_lr,
)
from vpd.decomp.masks import stochastic_masks_flat
from vpd.decomp.monitor import l0_per_matrix, quick_eval
from vpd.utils import checkpoint as ckpt
from vpd.utils.distributed import Dist, DistributedConfigError, row_seeds
from vpd.utils.errors import UserError
from vpd.utils.io import MetricsLog
from vpd.utils.provenance import differences

log = logging.getLogger("vpd")


class NonFiniteLossError(UserError, RuntimeError):
    """A loss term became NaN or inf; the message names the step and the term."""


# independent random streams, each keyed by (seed, stream, step, global batch row)
STREAM_STOCHASTIC, STREAM_ADVERSARY_INIT, STREAM_EVAL = 1, 2, 3


class Trainer:
    def __init__(
        self,
        dec,
        train_batches,
        *,
        seed: int = 0,
        out_dir: Optional[str | Path] = None,
        eval_batch: Any = None,
        progress: bool = True,
        dist: Optional[Dist] = None,
    ):
        self.dec, self.cfg, self.seed = dec, dec.config, int(seed)
        fused.set_enabled(self.cfg.compiles)
        if self.cfg.fused_kernels and not self.cfg.compiles:
            log.info("fused kernels off for this run: %d steps, below decompose.fused_kernels_min_steps %d",
                     self.cfg.steps, self.cfg.fused_kernels_min_steps)
        self.dist = dist or Dist()
        if self.cfg.world_size != self.dist.world_size:
            raise DistributedConfigError(
                f"decompose.world_size is {self.cfg.world_size} but the trainer runs in {self.dist.world_size} process(es)"
            )
        self.batches = train_batches
        self.callable_batches = callable(train_batches)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress and self.dist.is_main
        self.records: list[dict] = []
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl") if self.out_dir and self.dist.is_main else None
        self.gen_data = torch.Generator().manual_seed(self.seed + 11)  # the global batch order (same on every rank)
        # foreach: one multi-tensor kernel per Adam op instead of one op per parameter
        self.opt = torch.optim.AdamW(dec.parameters(), lr=self.cfg.lr, weight_decay=0.0, foreach=True)
        self.adversary: Optional[PersistentAdversary] = None
        self.adv_enabled = self.cfg.coeffs.adversarial_recon > 0
        self.step = 0
        self._iter = None
        self._consumed = 0
        self._fired = torch.zeros(dec.layout.total, dtype=torch.bool, device=dec.device)  # [ΣC]
        self.eval_batch = self.dist.shard(eval_batch) if eval_batch is not None else None  # this rank's rows

    # ------------------------------------------------------------ data
    def _next_batch(self):
        """This rank's rows of the next global batch."""
        self._consumed += 1
        if self.callable_batches:
            return self.dist.shard(self.batches(self.gen_data))
        if self._iter is None:
            self._iter = iter(self.batches)
        try:
            return self.dist.shard(next(self._iter))
        except StopIteration:
            raise RuntimeError(f"train_batches ran out after {self._consumed - 1} batches ({self.cfg.steps} steps needed)") from None

    def _row_seeds(self, stream: int, step: int, local_rows: int) -> list[int]:
        """Seeds of this rank's rows, keyed by their global index in the batch."""
        first = self.dist.rank * local_rows
        return row_seeds(self.seed, stream, step, range(first, first + local_rows))

    def _skip_batches(self, n: int) -> None:
        if not self.callable_batches:
            for _ in range(n):
                self._next_batch()
        else:
            self._consumed = n

    # ------------------------------------------------------------ records
    def _log(self, record: dict) -> None:
        self.records.append(record)
        if self.metrics is not None:
            self.metrics.log(record)

    # ------------------------------------------------------------ phases
    def faithfulness_warmup(self) -> None:
        """AdamW on the Δ-L2 term alone, fitting U, V to W before the main loop."""
        cfg = self.cfg
        params = self.dec.comps.component_parameters()
        opt = torch.optim.AdamW(params, lr=cfg.faithfulness_warmup_lr, weight_decay=0.0, foreach=True)
        first = None
        for _ in range(cfg.faithfulness_warmup_steps):
            opt.zero_grad(set_to_none=True)
            loss = faithfulness_loss(m.delta() for m in self.dec.comps.mats)
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
        with torch.no_grad():
            final = float(faithfulness_loss(m.delta() for m in self.dec.comps.mats))
        self._log({"step": -1, "phase": "faithfulness_warmup", "faithfulness_start": first, "faithfulness": final})

    def _ensure_adversary(self, lead_shape: tuple[int, ...]) -> None:
        if self.adversary is None:
            seeds = self._row_seeds(STREAM_ADVERSARY_INIT, 0, lead_shape[0])
            self.adversary = PersistentAdversary(self.dec.layout, lead_shape, self.cfg.pgd, device=self.dec.device,
                                                 row_seeds=seeds)
        if self.adversary.lead_shape != tuple(lead_shape):
            raise ValueError(
                f"batch positions {tuple(lead_shape)} differ from the persistent adversary's {self.adversary.lead_shape}; "
                "the persistent adversary needs a fixed batch shape"
            )

    def _main_losses(self, step: int, batch, loss_vs_clean, ci_lower, ci_upper, p: float) -> dict[str, torch.Tensor]:
        """Δ-L2, minimality, and the stochastic + adversarial losses from one batched masked forward."""
        dec, cfg = self.dec, self.cfg
        terms: dict[str, torch.Tensor] = {}
        terms["faithfulness"] = faithfulness_loss(m.delta() for m in dec.comps.mats)  # Δ once per step
        terms["importance_minimality"] = importance_minimality_loss(
            {"all": ci_upper}, p, cfg.frequency_beta, cfg.importance_eps, cfg.world_size
        )
        parts = []
        if cfg.coeffs.stochastic_recon > 0:
            seeds = self._row_seeds(STREAM_STOCHASTIC, step, ci_lower.shape[0])
            parts.append(("stochastic_recon", stochastic_masks_flat(ci_lower, dec.layout, None, cfg.routing, seeds)))
        if self.adv_enabled:
            parts.append(("adversarial_recon", self.adversary.masks(ci_lower, requires_grad=True)))
        if parts and torch.is_tensor(batch):
            n = len(parts)
            masks = torch.cat([pm[0] for _, pm in parts], 0)  # [n*B, ..., ΣC]
            dmasks = torch.cat([pm[1] for _, pm in parts], 0)  # [n*B, ..., L]
            pred = dec.masked_forward_flat(torch.cat([batch] * n, 0), masks, dmasks)
            for (name, _), pr in zip(parts, pred.chunk(n, dim=0)):
                terms[name] = loss_vs_clean(pr)
        else:  # a non-tensor batch cannot be stacked: one masked forward per term
            for name, (masks, dmasks) in parts:
                terms[name] = loss_vs_clean(dec.masked_forward_flat(batch, masks, dmasks))
        return terms

    def train_step(self, step: int, batch) -> dict[str, float]:
        dec, cfg = self.dec, self.cfg
        total_steps = cfg.steps
        lr = cosine_lr(step, total_steps, cfg.lr, cfg.lr_min_frac)
        adv_lr = warmup_lr(step, total_steps, cfg.pgd.lr, cfg.pgd.warmup_frac)
        p = anneal_p(step, total_steps, cfg.p_start, cfg.p_end)
        for g in self.opt.param_groups:
            g["lr"] = lr
        c = cfg.coeffs

        with record_function("vpd.clean_forward"):
            clean, inputs = dec.matrix_inputs(batch)  # no grad
        with record_function("vpd.ci_forward"):
            ci_lower, ci_upper = dec.ci_flat_from_inputs(inputs)  # [..., ΣC] each
        lead = tuple(ci_lower.shape[:-1])

        loss_vs_clean = output_loss_fn(cfg.output_loss, clean)  # target softmax computed once per step

        def recon(masks, dmasks, detach=False):
            return loss_vs_clean(dec.masked_forward_flat(batch, masks, dmasks, detach_components=detach))

        if self.adv_enabled:
            self._ensure_adversary(lead)
            with record_function("vpd.adversary_ascents"):
                for _ in range(cfg.pgd.n_warmup_ascents):
                    self.adversary.ascend(lambda m, d: recon(m, d, detach=True), ci_lower, adv_lr,
                                          grad_scale=1.0 / self.dist.world_size)

        with record_function("vpd.main_forward"):
            terms = self._main_losses(step, batch, loss_vs_clean, ci_lower, ci_upper, p)
        coeff = {
            "faithfulness": c.faithfulness,
            "importance_minimality": c.importance_minimality,
            "stochastic_recon": c.stochastic_recon,
            "adversarial_recon": c.adversarial_recon,
        }
        total = sum(coeff[k] * v for k, v in terms.items())
        values = self.dist.mean_values(torch.stack([v.detach() for v in terms.values()] + [total.detach()]).tolist())
        names = list(terms) + ["total"]
        for k, v in zip(names, values):
            if not torch.isfinite(torch.tensor(v)):
                raise NonFiniteLossError(
                    f"step {step}: loss '{k}' is {v}; stopping (the last good checkpoint is kept"
                    + (f" under {self.out_dir / 'checkpoints'})" if self.out_dir else ")")
                )

        self.opt.zero_grad(set_to_none=True)
        with record_function("vpd.main_backward"):
            total.backward()
            self.dist.average_gradients(dec.parameters())
        with record_function("vpd.optimizer_step"):
            torch.nn.utils.clip_grad_norm_(dec.comps.component_parameters(), cfg.grad_clip_components)
            self.opt.step()
        if self.adv_enabled:
            with record_function("vpd.adversary_step"):
                # the adversarial loss's own gradient (as a share of the global mean loss)
                grad = self.adversary.grads(1.0 / (c.adversarial_recon * self.dist.world_size))
                self.adversary.release()
                self.adversary.step(grad, adv_lr)

        with torch.no_grad():
            active = ci_lower.detach() > 0  # [..., ΣC]
            self._fired |= active.reshape(-1, active.shape[-1]).any(0)
            l0 = l0_per_matrix(dec.layout.split(active))
            l0 = dict(zip(l0, self.dist.mean_values(list(l0.values()))))
        rec = dict(zip(names, values))
        rec.update({"lr": lr, "adv_lr": adv_lr, "p": p})
        rec["l0_total"] = sum(l0.values())
        rec.update({f"l0/{k}": v for k, v in l0.items()})
        return rec

    # ------------------------------------------------------------ eval
    def _get_eval_batch(self):
        """This rank's rows of the fixed eval batch."""
        if self.eval_batch is None:
            n = self.cfg.eval_batch_size or self.cfg.batch_size
            if self.callable_batches:
                self.eval_batch = self.batches(torch.Generator().manual_seed(self.seed + 14))
                if torch.is_tensor(self.eval_batch):
                    self.eval_batch = self.eval_batch[:n]
            else:
                # Iterable input: the first batch it yields is the fixed eval batch.
                self.eval_batch = next(iter(self.batches))
            self.eval_batch = self.dist.shard(self.eval_batch)  # this rank's rows
        return self.eval_batch

    def evaluate(self, step: int) -> dict:
        gen = torch.Generator(device=self.dec.device).manual_seed(self.seed * 1_000_003 + step)
        batch = self._get_eval_batch()
        seeds = self._row_seeds(STREAM_EVAL, step, batch.shape[0]) if torch.is_tensor(batch) else None
        rec = {"step": step, "phase": "eval", **quick_eval(self.dec, batch, gen, dist=self.dist, row_seeds=seeds)}
        self._log(rec)
        return rec

    # ------------------------------------------------------------ checkpoints
    def _ckpt_root(self) -> Optional[Path]:
        return self.out_dir / "checkpoints" if self.out_dir else None

    def save_checkpoint(self, steps_done: int) -> None:
        """Rank 0 writes; every rank joins in gathering the whole batch's adversary state."""
        root = self._ckpt_root()
        if root is None:
            return
        adv = None
        if self.adversary is not None:
            adv = {k: self.dist.gather_rows(v) for k, v in self.adversary.state_tensors("adv").items()}
        fired = self.dist.max_(self._fired.to(torch.uint8))
        if not self.dist.is_main:
            self.dist.barrier()
            return
        tensors: dict[str, torch.Tensor] = {}
        for m in self.dec.comps.mats:
            tensors[f"comp.{m.name}.V"] = m.V.detach()
            tensors[f"comp.{m.name}.U"] = m.U.detach()
        for k, v in self.dec.ci_fn.state_dict().items():
            tensors[f"ci.{k}"] = v
        opt_t, opt_meta = ckpt.optimizer_state_to_flat(self.opt, "opt")
        tensors.update(opt_t)
        if adv is not None:
            tensors.update(adv)
        rng_t, rng_meta = ckpt.rng_state()
        tensors.update(rng_t)
        tensors["rng.data"] = self.gen_data.get_state()
        tensors["fired"] = fired
        meta = {
            "optimizer": opt_meta,
            "rng": rng_meta,
            "adv_t": self.adversary.t if self.adversary is not None else None,
            "batches_consumed": self._consumed,
            "config": self.cfg.to_dict(),
            "provenance": self.dec.provenance,
            "metrics": self.metrics.read() if self.metrics is not None else [],  # restored on resume
        }
        ckpt.save(root, steps_done, tensors, meta, keep=self.cfg.checkpoint_keep)
        self.dist.barrier()  # the other ranks wait until the checkpoint is complete

    def try_resume(self) -> int:
        root = self._ckpt_root()
        if root is None:
            return 0
        found = ckpt.load_latest(root)
        if found is None:
            return 0
        tensors, meta = found
        if meta["config"] != self.cfg.to_dict():
            ckpt.set_aside_on_all_ranks(root, "written with a different decompose config", self.dist)
            return 0
        stale = differences(meta.get("provenance"), self.dec.provenance)
        if stale:
            ckpt.set_aside_on_all_ranks(root, "computed from other inputs (" + "; ".join(stale) + ")", self.dist)
            return 0
        with torch.no_grad():
            for m in self.dec.comps.mats:
                m.V.copy_(tensors[f"comp.{m.name}.V"])
                m.U.copy_(tensors[f"comp.{m.name}.U"])
        self.dec.ci_fn.load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("ci.")})
        ckpt.optimizer_state_from_flat(self.opt, tensors, meta["optimizer"], "opt")
        if meta["adv_t"] is not None:
            rows = self.dist.rows(tensors["adv.src"].shape[0])  # this rank's rows of the saved batch
            adv = {k: v[rows] for k, v in tensors.items() if k.startswith("adv.")}
            self._ensure_adversary(tuple(adv["adv.src"].shape[:-1]))
            self.adversary.load_state_tensors(adv, meta["adv_t"], "adv")
        ckpt.set_rng_state(tensors, meta["rng"])
        self.gen_data.set_state(tensors["rng.data"])
        self._fired = tensors["fired"].bool().to(self.dec.device)
        self._skip_batches(int(meta["batches_consumed"]))
        step = int(meta["step"])
        if self.metrics is not None:
            self.metrics.restore(meta.get("metrics", []), step - 1)
        log.info("resumed decomposition from %s at step %d", root, step)
        return step

    # ------------------------------------------------------------ loop
    def run(self) -> None:
        # one set of hooks for the whole run: the compiled masked forward stays valid (components.py)
        with self.dec.comps.hooked():
            self._run()

    def _run(self) -> None:
        cfg = self.cfg
        self._get_eval_batch()  # fixed before any training batch is drawn (also on resume)
        start = self.try_resume()
        if start == 0:
            if self.metrics is not None and self.metrics.path.exists():
                self.metrics.path.unlink()  # a fresh run starts a fresh log
            self.faithfulness_warmup()
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="decompose",
                   disable=not self.progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        for step in bar:
            if step % cfg.eval_every == 0:
                self.evaluate(step)
            rec = self.train_step(step, self._next_batch())
            done = step + 1
            if step % cfg.log_every == 0 or done == cfg.steps:
                rec = {"step": step, "phase": "train", **rec}
                rec["fired_total"] = int(self.dist.max_(self._fired.to(torch.uint8)).sum())  # fired on any rank
                self._fired.zero_()
                self._log(rec)
                bar.set_postfix(
                    total=f"{rec['total']:.3g}", stoch=f"{rec.get('stochastic_recon', 0):.3g}",
                    adv=f"{rec.get('adversarial_recon', 0):.3g}", l0=f"{rec['l0_total']:.0f}",
                    s_per_step=f"{(time.perf_counter() - t0) / (done - start):.2f}",
                )
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                self.save_checkpoint(done)
        bar.close()
        self.evaluate(cfg.steps)
