"""Public API of the VPD engine (stable: other stages and outside scripts use it).

    from vpd.decomp import DecompositionConfig, Decomposition, decompose

    cfg = DecompositionConfig.from_dict(yaml_dict["decompose"])
    dec = decompose(target, train_batches, cfg, seed=0, dtype=torch.float32, out_dir=None)
    dec.save("results/x/decomposition")
    dec = Decomposition.load("results/x/decomposition", target)

`decompose(target, train_batches, config, *, seed=0, dtype=torch.float32, device=None,
out_dir=None, eval_batch=None, progress=True, dist=None, inputs=None) -> Decomposition`
    Decomposes the nn.Linear modules of any nn.Module `target` matched by `config.matrices`
    (fnmatch patterns, a C each; a pattern matching nothing raises, listing the available
    names). `train_batches` is either a callable `generator -> batch` (resumable exactly: the
    generator's state is checkpointed) or an iterable of batches (on resume, consumed batches
    are skipped). A batch is whatever `target(batch)` accepts; its first dim is the batch dim,
    and its shape must stay fixed (the persistent adversary keeps one source per position).
    `eval_batch` is the fixed batch of the periodic eval (default: drawn once from a callable
    with its own seed, or the first batch of an iterable).
    `dtype` is the autocast dtype of the forwards (bf16 or fp32; master weights and losses stay
    fp32). With `out_dir`, metrics go to out_dir/metrics.jsonl and resumable checkpoints to
    out_dir/checkpoints/ (a rerun resumes from the newest valid one).

`Decomposition(target, config, *, seed=0, dtype=torch.float32, device=None)` (untrained;
the trained one comes from `decompose` or `Decomposition.load`), bound to its target:
    .target, .config, .ci_fn, .device, .dtype (autocast dtype of every forward below)
    .names                   matrix names in the target's module order (the canonical order)
    .C                       {name: C}; .total_C
    .shapes                  {name: (d_out, d_in)}
    .components(name)        (V [d_in, C], U [C, d_out]) detached fp32 tensors
    .comps[name].V / .U      the trainable nn.Parameters themselves (for in-place edits)
    .delta(name)             Δ = W - (V U)^T  [d_out, d_in]
    .subcomponent_name(name, c)  e.g. "2.mlp.down_proj:2359" for ("h.2.mlp.down_proj", 2359)
    .target_forward(batch)   the target's output (no grad)
    .matrix_inputs(batch)    (target output, {name: clean input x [..., d_in]})
    .ci(batch, upper=False)  {name: CI [..., C]} (lower-leaky; upper=True: upper-leaky), no grad
    .ci_from_inputs(inputs)  (lower, upper) CI dicts with gradient, from matrix inputs
    .layout                  the flat [..., ΣC] order used internally (masks.FlatLayout);
                             .ci_flat_from_inputs / .masked_forward_flat work on flat tensors
    .masked_forward(batch, masks, delta_masks=None)
                             the target's output with masked components; `masks[name]` is
                             [..., C]; matrices missing from `masks` run their original weight;
                             `delta_masks` None (or a missing name) excludes Δ (m_Δ = 0), a
                             tensor [...] or float scales it.
    .save(dir) / Decomposition.load(dir, target, *, dtype=torch.float32, device=None,
                             allow_mismatch=False)
                             components.safetensors (name.V, name.U), ci_fn.safetensors,
                             decomposition.json (config, names, C, shapes, provenance); load checks
                             that the saved matrices and shapes match the target's, naming both,
                             and raises ProvenanceError if the target's weights digest differs
                             from the recorded one (unless allow_mismatch=True).
    .provenance              {target_sha256, seed, dtype, input digests} it was computed from
    .history                 metrics records of the run that produced it (empty after load)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from vpd.decomp import fused
from vpd.decomp.ci_functions import build_ci_function, readouts
from vpd.decomp.components import Components, match_matrices
from vpd.decomp.config import DecompositionConfig
from vpd.decomp.masks import FlatLayout
from vpd.utils.io import atomic_path, read_json, write_json
from vpd.utils.provenance import ProvenanceError, differences, module_digest
from vpd.utils.runtime import autocast

if TYPE_CHECKING:
    from vpd.utils.distributed import Dist

log = logging.getLogger("vpd")

COMPONENTS_FILE = "components.safetensors"
CI_FN_FILE = "ci_fn.safetensors"
META_FILE = "decomposition.json"

Batches = Union[Callable[[torch.Generator], Any], Iterable[Any]]


class Decomposition:
    """A target with its rank-one components and CI function (see the module docstring)."""

    def __init__(
        self,
        target: nn.Module,
        config: DecompositionConfig,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
    ):
        self.config = config
        self.device = torch.device(device) if device is not None else _module_device(target)
        self.dtype = dtype
        self.target = target.to(self.device)
        self.target.requires_grad_(False)  # the target's weights never train
        self.target.eval()
        c_per = match_matrices(target, config.matrices)
        gen = torch.Generator().manual_seed(int(seed))
        self.comps = Components(target, c_per, gen).to(self.device)
        d_in = {n: self.comps[n].d_in for n in self.comps.names}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + 1)  # the CI function's init does not touch the caller's RNG
            self.ci_fn = build_ci_function(d_in, c_per, config.ci_fn).to(self.device)
        # flat [..., ΣC] layout of CIs and masks: the CI function's read-out order
        self.layout = FlatLayout(self.ci_fn.order, self.ci_fn.splits)
        self.history: list[dict] = []
        # what the components were computed from: the target's weights digest, and from `decompose`
        # the seed, the autocast dtype and the caller's input digests
        self.provenance: dict[str, Any] = {"target_sha256": module_digest(self.target)}
        self._flat_forward_kernel = fused.kernel(self._flat_forward, fullgraph=False)

    # ------------------------------------------------------------ structure
    @property
    def names(self) -> list[str]:
        return list(self.comps.names)

    @property
    def C(self) -> dict[str, int]:
        return self.comps.C

    @property
    def total_C(self) -> int:
        return sum(self.C.values())

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (self.comps[n].d_out, self.comps[n].d_in) for n in self.names}

    def components(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.comps[name]
        return m.V.detach(), m.U.detach()

    def delta(self, name: str) -> torch.Tensor:
        with torch.no_grad():
            return self.comps[name].delta()

    @staticmethod
    def subcomponent_name(name: str, c: int) -> str:
        short = name[2:] if name.startswith("h.") else name
        return f"{short}:{c}"

    def parameters(self) -> list[nn.Parameter]:
        return self.comps.component_parameters() + list(self.ci_fn.parameters())

    # ------------------------------------------------------------ forwards
    def _autocast(self) -> contextlib.ExitStack:
        """Autocast to the run's dtype; on CPU in bf16 also pick SDPA's math kernel, which
        measured 2x faster than the flash kernel there at these shapes (same result)."""
        stack = contextlib.ExitStack()
        stack.enter_context(autocast(self.device, self.dtype))
        if self.dtype == torch.bfloat16 and self.device.type == "cpu":
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        return stack

    def _to_device(self, batch):
        return batch.to(self.device) if isinstance(batch, torch.Tensor) else batch

    @torch.no_grad()
    def target_forward(self, batch) -> torch.Tensor:
        with self._autocast():
            return self.target(self._to_device(batch))

    @torch.no_grad()
    def matrix_inputs(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The target's clean output and every decomposed matrix's input (what the CI function sees)."""
        with self._autocast(), self.comps.capture_inputs() as inputs:
            out = self.target(self._to_device(batch))
        return out, dict(inputs)

    def ci_flat_from_inputs(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower-leaky, upper-leaky) CI of all matrices as flat [..., ΣC] fp32 tensors in
        `self.layout` order, with gradient to the CI function."""
        with self._autocast():
            z = self.ci_fn(inputs)
        return readouts(z, self.config.leaky_alpha)

    def ci_from_inputs(self, inputs: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
        """(lower-leaky, upper-leaky) CI per matrix [..., C] fp32, with gradient to the CI function."""
        lower, upper = self.ci_flat_from_inputs(inputs)
        return self.layout.split(lower), self.layout.split(upper)

    @torch.no_grad()
    def ci(self, batch, upper: bool = False) -> dict[str, torch.Tensor]:
        _, inputs = self.matrix_inputs(batch)
        lower, up = self.ci_from_inputs(inputs)
        return up if upper else lower

    def masked_forward(
        self,
        batch,
        masks: Mapping[str, torch.Tensor],
        delta_masks: Optional[Mapping[str, Union[torch.Tensor, float]]] = None,
        *,
        detach_components: bool = False,
    ) -> torch.Tensor:
        """The target's output with masks on the components (see the module docstring)."""
        unknown = set(masks) - set(self.names)
        if unknown:
            raise KeyError(f"masks for unknown matrices {sorted(unknown)}; decomposed: {self.names}")
        dm = None
        if delta_masks is not None:
            dm = {}
            for n, v in delta_masks.items():
                if not torch.is_tensor(v):
                    v = torch.full(masks[n].shape[:-1], float(v), device=masks[n].device)
                dm[n] = v
        with self._autocast(), self.comps.masked(masks, dm, detach_components):
            return self.target(self._to_device(batch))

    def masked_forward_flat(
        self, batch, masks: torch.Tensor, delta_masks: torch.Tensor, *, detach_components: bool = False
    ) -> torch.Tensor:
        """`masked_forward` with flat masks [..., ΣC] and Δ masks [..., L] in `self.layout` order.

        With fused kernels on (decomp/fused.py) the whole masked forward is one compiled graph."""
        with self._autocast(), self.comps.hooked():
            try:
                return self._flat_forward_kernel(self._to_device(batch), masks, delta_masks, detach_components)
            finally:
                self.comps.clear_masks()

    def _flat_forward(self, batch, masks: torch.Tensor, delta_masks: torch.Tensor, detach: bool) -> torch.Tensor:
        """The target's output with the (installed) hooks masking every matrix; no context managers,
        so that torch.compile traces it as one graph."""
        self.comps.set_masks(self.layout.split(masks), self.layout.split_delta(delta_masks), detach)
        out = self.target(batch)
        self.comps.clear_masks()
        return out

    # ------------------------------------------------------------ persistence
    def save(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        comp = {}
        for n in self.names:
            V, U = self.components(n)
            comp[f"{n}.V"], comp[f"{n}.U"] = V.float().cpu().contiguous(), U.float().cpu().contiguous()
        with atomic_path(out_dir / COMPONENTS_FILE) as tmp:
            save_file(comp, str(tmp), metadata={"format": "pt"})
        ci = {k: v.detach().float().cpu().contiguous() for k, v in self.ci_fn.state_dict().items()}
        with atomic_path(out_dir / CI_FN_FILE) as tmp:
            save_file(ci, str(tmp), metadata={"format": "pt"})
        write_json(
            out_dir / META_FILE,
            {
                "config": self.config.to_dict(),
                "names": self.names,
                "C": self.C,
                "shapes": {n: list(s) for n, s in self.shapes.items()},
                "provenance": self.provenance,
            },
        )

    @classmethod
    def load(
        cls,
        in_dir: str | Path,
        target: nn.Module,
        *,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
        allow_mismatch: bool = False,
    ) -> "Decomposition":
        in_dir = Path(in_dir)
        for f in (META_FILE, COMPONENTS_FILE, CI_FN_FILE):
            if not (in_dir / f).exists():
                raise FileNotFoundError(f"{in_dir / f} does not exist (run the decompose stage first)")
        meta = read_json(in_dir / META_FILE)
        cfg = DecompositionConfig.from_dict(meta["config"])
        saved = {n: tuple(meta["shapes"][n]) for n in meta["names"]}
        modules = dict(target.named_modules())
        found = {
            n: tuple(modules[n].weight.shape) for n in saved if isinstance(modules.get(n), nn.Linear)
        }
        if found != saved:
            problems = [f"{n}: saved {saved[n]}, target {found.get(n, 'missing')}" for n in saved if found.get(n) != saved[n]]
            raise ValueError(
                f"decomposition {in_dir} does not match the target: " + "; ".join(problems[:8])
                + f" (saved matrices: {list(saved)})"
            )
        dec = cls(target, cfg, dtype=dtype, device=device)
        if dec.names != list(saved) or dec.C != {n: int(c) for n, c in meta["C"].items()}:
            raise ValueError(
                f"decomposition {in_dir} was made for matrices {meta['C']} but its config matches {dec.C} on this target"
            )
        recorded = dict(meta.get("provenance") or {})
        stale = differences({"target_sha256": recorded.get("target_sha256")}, {"target_sha256": dec.provenance["target_sha256"]})
        if stale and not allow_mismatch:
            raise ProvenanceError(
                f"decomposition {in_dir} was computed from another target ({stale[0]}): rerun the decompose "
                "stage on this target, or pass allow_mismatch=True to use it anyway"
            )
        if stale:
            log.warning("using decomposition %s with another target than its own (%s)", in_dir, stale[0])
        dec.provenance = recorded  # what the components were computed from, as recorded
        comp = load_file(str(in_dir / COMPONENTS_FILE))
        with torch.no_grad():
            for n in dec.names:
                m = dec.comps[n]
                for key, p in (("V", m.V), ("U", m.U)):
                    t = comp[f"{n}.{key}"]
                    if t.shape != p.shape:
                        raise ValueError(f"{in_dir / COMPONENTS_FILE}: {n}.{key} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
                    p.copy_(t)
        dec.ci_fn.load_state_dict({k: v.to(dec.device) for k, v in load_file(str(in_dir / CI_FN_FILE)).items()})
        return dec


def load_decomposition(
    target_dir: str | Path, decomposition_dir: str | Path, *, dtype: torch.dtype = torch.float32, device=None,
    expect=None,
) -> tuple[nn.Module, "Decomposition"]:
    """The trained target from a `train_target` output dir (frozen, eval mode; `expect`, a
    TargetModelConfig, refuses another architecture) and its decomposition."""
    from vpd.target.model import TargetLM

    device = torch.device(device) if device is not None else torch.device("cpu")
    target = TargetLM.from_pretrained(target_dir, map_location=device, expect=expect).eval()
    target.requires_grad_(False)
    return target, Decomposition.load(decomposition_dir, target, dtype=dtype, device=device)


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def decompose(
    target: nn.Module,
    train_batches: Batches,
    config: DecompositionConfig,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
    out_dir: Optional[str | Path] = None,
    eval_batch: Any = None,
    progress: bool = True,
    dist: Optional["Dist"] = None,
    inputs: Optional[Mapping[str, str]] = None,
) -> Decomposition:
    """Run the VPD optimisation on `target` and return the trained Decomposition.

    Under torchrun pass `dist=vpd.utils.distributed.init_distributed(config.world_size, ...)`:
    each process then trains on its rows of every global batch (see decomp/trainer.py).
    `inputs` ({name: digest}, e.g. the token shards' sha256) joins the target's digest, the seed and
    the dtype in `provenance`: checkpoints recorded under other values are set aside, not resumed."""
    from vpd.decomp.trainer import Trainer

    dec = Decomposition(target, config, seed=seed, dtype=dtype, device=device)
    dec.provenance.update({"seed": int(seed), "dtype": str(dtype).removeprefix("torch."), **(inputs or {})})
    trainer = Trainer(dec, train_batches, seed=seed, out_dir=out_dir, eval_batch=eval_batch, progress=progress,
                      dist=dist)
    trainer.run()
    dec.history = trainer.records
    return dec
