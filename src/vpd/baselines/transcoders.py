"""BatchTopK transcoders of the target's MLPs: per-layer (PLT) and cross-layer (CLT).

A transcoder for an n-layer model has, for every layer i, an encoder reading x_i, the MLP's
normalised input (the input of c_fc), into L latents:

    a_i = BatchTopK(ReLU(x_i W_enc[i] + b_enc[i]))                     [N, L]

and predicts the MLP output (the output of down_proj) of layer j as

    y_j = b_dec[j] + sum_{i in sources(j)} a_i W_dec[i -> j]            [N, d_out]

PLT: sources(j) = {j}. CLT: sources(j) = {0..j}, i.e. latents of layer i write to every j >= i.
BatchTopK keeps the k * N largest activations over the whole batch of N tokens (k per token on
average). For inference a per-layer threshold θ_i, an EMA of the smallest kept activation during
training, replaces the batch top-k: a = ReLU(pre) * 1[pre > θ] (token-independent).

Each latent's decoder rows (concatenated over its targets) have unit norm, restored after every
optimiser step (and the gradient's radial component is removed before it). Latents that have not
fired in `dead_tokens` training tokens are dead; the AuxK loss lets the top-k_aux dead latents of
each token reconstruct the main reconstruction's error. Training minimises local FVU (MSE over
the batch variance) on activations streamed from the frozen target, with Adam.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional, Sequence

import pandas as pd
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vpd.baselines.config import TranscoderTrainConfig
from vpd.utils.io import MetricsLog, atomic_path, write_json
from vpd.utils.runtime import autocast

Kind = Literal["plt", "clt"]
Mode = Literal["batchtopk", "threshold"]
WEIGHTS_FILE = "transcoder.safetensors"
CONFIG_FILE = "cfg.json"


# ---------------------------------------------------------------- sparsity functions
def batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k * N largest ReLU'd activations of pre [N, L] over the whole batch; zero the rest."""
    acts = torch.relu(pre)
    n_keep = min(k * pre.shape[0], acts.numel())
    flat = acts.reshape(-1)
    vals, idx = flat.topk(n_keep, sorted=False)
    return torch.zeros_like(flat).scatter(0, idx, vals).reshape(acts.shape)


def threshold_acts(pre: torch.Tensor, theta: float | torch.Tensor) -> torch.Tensor:
    """Inference sparsity: ReLU(pre) where pre > θ, else 0."""
    return torch.where(pre > theta, torch.relu(pre), torch.zeros_like(pre))


# ---------------------------------------------------------------- the module
class Transcoder(nn.Module):
    """PLT or CLT over all `n_layer` MLPs of a model with the same width everywhere."""

    def __init__(
        self, kind: Kind, n_layer: int, d_in: int, d_out: int, n_latents: int, k: int,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        if kind not in ("plt", "clt"):
            raise ValueError(f"transcoder kind must be 'plt' or 'clt', got {kind!r}")
        self.kind, self.n_layer, self.d_in, self.d_out, self.n_latents, self.k = kind, n_layer, d_in, d_out, n_latents, k
        self.W_enc = nn.Parameter(torch.empty(n_layer, d_in, n_latents))  # [n, d_in, L]
        self.b_enc = nn.Parameter(torch.zeros(n_layer, n_latents))  # [n, L]
        # W_dec[i]: [L, n_targets(i), d_out], targets of layer i are layers i .. i + n_targets - 1.
        self.W_dec = nn.ParameterList(
            nn.Parameter(torch.empty(n_latents, self.n_targets(i), d_out)) for i in range(n_layer)
        )
        self.b_dec = nn.Parameter(torch.zeros(n_layer, d_out))  # [n, d_out]
        self.register_buffer("threshold", torch.full((n_layer,), float("nan")))  # [n], nan until trained
        self.register_buffer("since_fired", torch.zeros(n_layer, n_latents, dtype=torch.long))  # tokens
        self.reset_parameters(generator)

    def n_targets(self, i: int) -> int:
        return 1 if self.kind == "plt" else self.n_layer - i

    def sources(self, j: int) -> list[int]:
        return [j] if self.kind == "plt" else list(range(j + 1))

    def latent_param_cost(self, i: int) -> int:
        """Parameters one active latent of layer i uses: d_in + (number of targets) * d_out."""
        return self.d_in + self.n_targets(i) * self.d_out

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Unit-norm random decoders; random encoder columns of norm ~1 (N(0, 1/d_in)); zero biases."""
        for w in self.W_dec:
            w.copy_(torch.randn(w.shape, generator=generator))
        self.normalise_decoder()
        enc = torch.randn(self.W_enc.shape, generator=generator) / math.sqrt(self.d_in)
        self.W_enc.copy_(enc)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # ------------------------------------------------------------ decoder norm
    def decoder_norms(self, i: int) -> torch.Tensor:
        return self.W_dec[i].flatten(1).norm(dim=1)  # [L]

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        for w in self.W_dec:
            w.div_(w.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None])

    @torch.no_grad()
    def remove_radial_grad(self) -> None:
        """Project out the decoder gradient's component along each (unit) decoder vector."""
        for w in self.W_dec:
            if w.grad is not None:
                flat_w, flat_g = w.flatten(1), w.grad.flatten(1)  # [L, n_t * d_out]
                flat_g.sub_((flat_g * flat_w).sum(1, keepdim=True) * flat_w)

    # ------------------------------------------------------------ forward pieces
    def pre_acts(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations of layer i: x [N, d_in] -> [N, L]."""
        return x @ self.W_enc[i] + self.b_enc[i]

    def activate(self, i: int, pre: torch.Tensor, mode: Mode) -> torch.Tensor:
        if mode == "batchtopk":
            return batch_topk(pre, self.k)
        if mode == "threshold":
            if torch.isnan(self.threshold[i]):
                raise RuntimeError(f"transcoder layer {i} has no inference threshold (train it first)")
            return threshold_acts(pre, self.threshold[i])
        raise ValueError(f"mode must be 'batchtopk' or 'threshold', got {mode!r}")

    def encode(self, i: int, x: torch.Tensor, mode: Mode = "threshold") -> torch.Tensor:
        """Latents of layer i: x [..., d_in] -> [..., L] (batch top-k over all leading dims)."""
        lead = x.shape[:-1]
        return self.activate(i, self.pre_acts(i, x.reshape(-1, self.d_in)), mode).reshape(*lead, self.n_latents)

    def decode(self, j: int, acts: Sequence[Optional[torch.Tensor]], bias: bool = True) -> torch.Tensor:
        """Prediction of layer j's MLP output from the latents acts[i] [..., L] of its sources."""
        out = None
        for i in self.sources(j):
            term = acts[i] @ self.W_dec[i][:, j - i, :]  # [..., d_out]
            out = term if out is None else out + term
        return out + self.b_dec[j] if bias else out

    def forward(self, xs: Sequence[torch.Tensor], mode: Mode = "batchtopk") -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """All layers at once: MLP inputs xs[i] [N, d_in] -> (predictions [N, d_out], latents, pre-acts)."""
        pres = [self.pre_acts(i, x) for i, x in enumerate(xs)]
        acts = [self.activate(i, p, mode) for i, p in enumerate(pres)]
        return [self.decode(j, acts) for j in range(self.n_layer)], acts, pres

    # ------------------------------------------------------------ persistence
    def config_dict(self) -> dict:
        return {"kind": self.kind, "n_layer": self.n_layer, "d_in": self.d_in, "d_out": self.d_out,
                "n_latents": self.n_latents, "k": self.k}

    def save(self, out_dir: str | Path, extra: Optional[dict] = None) -> None:
        """`transcoder.safetensors` (weights, thresholds, dead counters) + `cfg.json`, atomically."""
        out_dir = Path(out_dir)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        write_json(out_dir / CONFIG_FILE, {**self.config_dict(), **(extra or {})})

    @classmethod
    def load(cls, out_dir: str | Path, map_location: str | torch.device = "cpu") -> "Transcoder":
        out_dir = Path(out_dir)
        for path in (out_dir / CONFIG_FILE, out_dir / WEIGHTS_FILE):
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist (run the baselines stage)")
        cfg = json.loads((out_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        tc = cls(**{k: cfg[k] for k in ("kind", "n_layer", "d_in", "d_out", "n_latents", "k")})
        tc.load_state_dict(load_file(str(out_dir / WEIGHTS_FILE)), strict=True)
        return tc.to(map_location)


def transcoder_name(kind: Kind, n_latents: int, k: int) -> str:
    """Directory/metric name of one swept transcoder, e.g. `plt_L4096_k16`."""
    return f"{kind}_L{n_latents}_k{k}"


def build_sweep(
    kinds: Sequence[Kind], n_latents: Sequence[int], ks: Sequence[int], n_layer: int, d_model: int, seed: int,
) -> dict[str, Transcoder]:
    """Every (kind, dictionary size, k) of the config's sweep, initialised from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return {
        transcoder_name(kind, n, k): Transcoder(kind, n_layer, d_model, d_model, n, k, generator=g)
        for kind in kinds for n in n_latents for k in ks
    }


# ---------------------------------------------------------------- losses
def fvu(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: sum (pred - y)^2 / sum (y - mean_N y)^2 over [N, d]."""
    resid = (pred - target).pow(2).sum()
    total = (target - target.mean(0, keepdim=True)).pow(2).sum()
    return resid / total.clamp_min(1e-12)


def auxk_acts(pre: torch.Tensor, dead: torch.Tensor, k_aux: int) -> Optional[torch.Tensor]:
    """Per token, the top-k_aux ReLU'd pre-activations among dead latents (None if none is dead)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return None
    masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))  # [N, L]
    vals, idx = masked.topk(min(k_aux, n_dead), dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


def transcoder_loss(
    tc: Transcoder, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], *,
    dead_tokens: int, k_aux: int, auxk_coeff: float,
) -> tuple[torch.Tensor, dict]:
    """Sum over layers of FVU, plus auxk_coeff x the AuxK FVU of the error; also per-layer stats."""
    preds, acts, pres = tc(xs, mode="batchtopk")
    fvus = [fvu(p, y) for p, y in zip(preds, ys)]
    loss = torch.stack(fvus).sum()
    aux_total = torch.zeros((), device=loss.device)
    dead = tc.since_fired >= dead_tokens  # [n, L]
    if auxk_coeff > 0 and bool(dead.any()):
        aux = [auxk_acts(p, dead[i], k_aux) for i, p in enumerate(pres)]
        if any(a is not None for a in aux):
            aux = [a if a is not None else torch.zeros_like(p) for a, p in zip(aux, pres)]
            for j in range(tc.n_layer):
                err = (ys[j] - preds[j]).detach()  # [N, d_out]
                aux_total = aux_total + fvu(tc.decode(j, aux, bias=False), err).nan_to_num(0.0)
            loss = loss + auxk_coeff * aux_total
    stats = {"fvu": [f.item() for f in fvus], "aux": aux_total.item(),
             "l0": [(a > 0).sum().item() / a.shape[0] for a in acts]}
    return loss, {"acts": acts, **stats}


@torch.no_grad()
def update_running_stats(tc: Transcoder, acts: Sequence[torch.Tensor], momentum: float) -> None:
    """Dead-latent counters and the inference threshold (EMA of the smallest kept activation)."""
    for i, a in enumerate(acts):
        fired = (a > 0).any(0)  # [L]
        tc.since_fired[i] += a.shape[0]
        tc.since_fired[i][fired] = 0
        kept = a[a > 0]
        if kept.numel():
            m = kept.min()
            tc.threshold[i] = m if torch.isnan(tc.threshold[i]) else momentum * tc.threshold[i] + (1 - momentum) * m


# ---------------------------------------------------------------- activations from the target
def mlp_modules(target: nn.Module) -> list[nn.Module]:
    """The MLP module of each block of a TargetLM-like model (`target.h[i].mlp`)."""
    try:
        return [block.mlp for block in target.h]
    except AttributeError as exc:
        raise TypeError("target must have blocks `h[i]` with an `mlp` submodule (vpd.target.model.TargetLM)") from exc


@contextlib.contextmanager
def capture_mlp_io(target: nn.Module) -> Iterator[tuple[list, list]]:
    """Temporary forward hooks recording each MLP's input and output (detached) per forward."""
    mlps = mlp_modules(target)
    ins: list[Optional[torch.Tensor]] = [None] * len(mlps)
    outs: list[Optional[torch.Tensor]] = [None] * len(mlps)

    def hook(i):
        def fn(module, inputs, output):
            ins[i], outs[i] = inputs[0].detach(), output.detach()
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(mlps)]
    try:
        yield ins, outs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def mlp_activations(target: nn.Module, idx: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[list, list]:
    """MLP inputs and outputs [N, d] (fp32, N = B * T) of every layer for token ids idx [B, T]."""
    device = next(target.parameters()).device
    with capture_mlp_io(target) as (ins, outs), autocast(device, dtype):
        target(idx.to(device))
    return [x.float().reshape(-1, x.shape[-1]) for x in ins], [y.float().reshape(-1, y.shape[-1]) for y in outs]


# ---------------------------------------------------------------- training
def lr_factor(step: int, tcfg: TranscoderTrainConfig) -> float:
    """Linear warm-up, constant, then linear decay to 0 over the last 20% of steps."""
    if step < tcfg.warmup_steps:
        return (step + 1) / tcfg.warmup_steps
    decay_start = int(0.8 * tcfg.steps)
    if step >= decay_start:
        return max(0.0, (tcfg.steps - step) / max(1, tcfg.steps - decay_start))
    return 1.0


@torch.no_grad()
def init_to_data(tc: Transcoder, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
    """Data-dependent start: b_dec at the mean MLP output, and each layer's encoder rescaled so that
    its own-layer reconstruction (latents of layer i into layer i) has the RMS of the centred MLP
    output. Random unit-norm decoders otherwise start at an error many times the signal (FVU >> 1).
    ReLU and top-k selection commute with a positive rescaling, so only the scale changes."""
    tc.b_dec.copy_(torch.stack([y.mean(0) for y in ys]))
    for i, (x, y) in enumerate(zip(xs, ys)):
        acts = batch_topk(tc.pre_acts(i, x), tc.k)  # [N, L]
        own = acts @ tc.W_dec[i][:, 0, :]  # [N, d_out]
        scale = (y - y.mean(0)).pow(2).mean().sqrt() / own.pow(2).mean().sqrt().clamp_min(1e-12)
        if torch.isfinite(scale) and scale > 0:
            tc.W_enc[i].mul_(scale)
            tc.b_enc[i].mul_(scale)


def transcoder_step(
    tc: Transcoder, opt: torch.optim.Optimizer, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
    tcfg: TranscoderTrainConfig, step: int,
) -> dict:
    """One Adam step on activations xs/ys[i] [N, d] (step counts from 0); returns loss and stats."""
    if step == 0:
        init_to_data(tc, xs, ys)
    for group in opt.param_groups:
        group["lr"] = tcfg.lr * lr_factor(step, tcfg)
    k_aux = tcfg.k_aux or max(1, tc.d_out // 2)
    loss, stats = transcoder_loss(tc, xs, ys, dead_tokens=tcfg.dead_tokens, k_aux=k_aux, auxk_coeff=tcfg.auxk_coeff)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    tc.remove_radial_grad()
    opt.step()
    tc.normalise_decoder()
    update_running_stats(tc, stats.pop("acts"), tcfg.threshold_momentum)
    dead = (tc.since_fired >= tcfg.dead_tokens).float().mean(1).tolist()
    return {"loss": loss.item(), "dead": dead, **stats}


def make_optimizer(tc: Transcoder, tcfg: TranscoderTrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(tc.parameters(), lr=tcfg.lr, betas=tuple(tcfg.betas))


def train_transcoders(
    target: nn.Module,
    sample_batch: Callable[[], torch.Tensor],
    transcoders: dict[str, Transcoder],
    tcfg: TranscoderTrainConfig,
    *,
    dtype: torch.dtype = torch.float32,
    metrics: Optional[MetricsLog] = None,
    log_every: int = 50,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Train several transcoders at once on the same streamed activations (one target forward per step).

    `sample_batch()` returns token ids [B, T]. The target is frozen (no_grad, never written).
    Returns, per transcoder name, the training stats of the last step per layer (fvu, l0, dead).
    """
    for p in target.parameters():
        p.requires_grad_(False)
    opts = {name: make_optimizer(tc, tcfg) for name, tc in transcoders.items()}
    last: dict[str, dict] = {}
    for step in tqdm(range(tcfg.steps), desc="transcoders", disable=not progress, mininterval=5):
        xs, ys = mlp_activations(target, sample_batch(), dtype)
        record = {"step": step + 1, "lr": tcfg.lr * lr_factor(step, tcfg)}
        for name, tc in transcoders.items():
            stats = last[name] = transcoder_step(tc, opts[name], xs, ys, tcfg, step)
            record[f"{name}/loss"] = stats["loss"]
            record[f"{name}/fvu"] = sum(stats["fvu"]) / tc.n_layer
            record[f"{name}/l0"] = sum(stats["l0"]) / tc.n_layer
            record[f"{name}/aux"] = stats["aux"]
            record[f"{name}/dead"] = sum(stats["dead"]) / tc.n_layer
        if metrics is not None and ((step + 1) % log_every == 0 or step + 1 == tcfg.steps):
            metrics.log(record)
    return {
        name: pd.DataFrame({"layer": range(tc.n_layer), "fvu": last[name]["fvu"], "l0": last[name]["l0"],
                            "dead_fraction": last[name]["dead"]})
        for name, tc in transcoders.items()
    }


@torch.no_grad()
def evaluate_transcoder_local(
    target: nn.Module, tc: Transcoder, windows: torch.Tensor, *, batch_size: int, mode: Mode = "threshold",
    dead_tokens: Optional[int] = None, dtype: torch.dtype = torch.float32,
) -> pd.DataFrame:
    """Per layer on clean target activations of windows [N, T + 1]: FVU, L0, latents alive on these
    tokens (fired at least once), and the training dead fraction (if `dead_tokens` is given)."""
    resid = torch.zeros(tc.n_layer, dtype=torch.float64)
    sum_y = torch.zeros(tc.n_layer, tc.d_out, dtype=torch.float64)
    sum_y2 = torch.zeros(tc.n_layer, dtype=torch.float64)
    active = torch.zeros(tc.n_layer, dtype=torch.float64)
    fired = torch.zeros(tc.n_layer, tc.n_latents, dtype=torch.bool)
    n = 0
    for start in range(0, len(windows), batch_size):
        xs, ys = mlp_activations(target, windows[start : start + batch_size, :-1], dtype)
        preds, acts, _ = tc(xs, mode=mode)
        for j in range(tc.n_layer):
            y = ys[j].double()
            resid[j] += (preds[j].double() - y).pow(2).sum().cpu()
            sum_y[j] += y.sum(0).cpu()
            sum_y2[j] += y.pow(2).sum().cpu()
            active[j] += (acts[j] > 0).sum().cpu()
            fired[j] |= (acts[j] > 0).any(0).cpu()
        n += ys[0].shape[0]
    total_var = sum_y2 - sum_y.pow(2).sum(1) / n  # sum over tokens of |y - mean y|^2
    out = pd.DataFrame({
        "layer": range(tc.n_layer),
        "fvu": (resid / total_var.clamp_min(1e-12)).tolist(),
        "l0": (active / n).tolist(),
        "alive_eval": fired.sum(1).tolist(),
    })
    if dead_tokens is not None:
        out["dead_fraction"] = (tc.since_fired.cpu() >= dead_tokens).float().mean(1).tolist()
    return out
