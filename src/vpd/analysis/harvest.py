"""The `harvest` stage: one pass over held-out tokens recording what every subcomponent fires on.

Per subcomponent (matrix, c) it records
  - firing density: the share of tokens with CI > 0 and with CI > `fire_threshold`;
  - a uniform sample (without replacement, seeded) of its firing tokens, each with the ±`context`
    tokens around it (clipped to the harvested window) and, per token, the CI and the component
    activation a_c = x · V_c;
  - the input tokens and next tokens it fires on, ranked by recall and by PMI (definitions below).

The sample is a bottom-k reservoir: every firing token draws an independent Uniform(0, 1) key and
each subcomponent keeps the k smallest keys seen so far, so after the pass every k-subset of its
firing tokens is equally likely (the same law as Algorithm R), and it vectorises over all
subcomponents of a matrix at once.

Token statistics, with n(c, v) the number of tokens v on which c fires, n(c) the firings of c,
n(v) the occurrences of v and N the harvested tokens:
  recall(c, v) = n(c, v) / n(c)       the share of c's firings that are on v
  precision(c, v) = n(c, v) / n(v)    how often c fires when v occurs
  pmi(c, v) = log(n(c, v) N / (n(c) n(v)))

Reads   <target>/{model.safetensors, config.json}, <tokens>/{val.bin, tokenizer.json},
        <decomposition>/{components.safetensors, ci_fn.safetensors, decomposition.json}
Writes  <out>/{subcomponents.parquet, examples.parquet, token_stats.parquet, vocab.json,
        harvest.json, final_config.yaml} and the component browser <out>/browser/.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vpd.analysis.config import HarvestConfig
from vpd.decomp.api import load_decomposition as load
from vpd.utils.io import atomic_path, read_json, write_json
from vpd.utils.runtime import default_device, resolve_precision


log = logging.getLogger("vpd")

SUBCOMPONENTS_FILE = "subcomponents.parquet"
EXAMPLES_FILE = "examples.parquet"
TOKEN_STATS_FILE = "token_stats.parquet"
VOCAB_FILE = "vocab.json"
META_FILE = "harvest.json"


# ---------------------------------------------------------------- uniform reservoir
class Reservoir:
    """Uniform sample without replacement of up to `k` events per group from a stream of batches.

    Each offered event draws a Uniform(0, 1) key from the seeded `rng`; a group keeps the events
    with the k smallest keys seen so far. Payloads are built only for new events that survive, by
    `payload_fn(indices into the offered batch) -> {name: array [n, ...]}`.
    """
    def __init__(self, k: int, rng: np.random.Generator):
        if k < 1:
            raise ValueError(f"reservoir size must be >= 1, got {k}")
        self.k = k
        self.rng = rng
        self.group = np.empty(0, dtype=np.int64)
        self.key = np.empty(0, dtype=np.float64)
        self.payload: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.group)

    def offer(self, group: np.ndarray, payload_fn: Callable[[np.ndarray], Mapping[str, np.ndarray]]) -> None:
        group = np.asarray(group, dtype=np.int64)
        if len(group) == 0:
            return
        key = self.rng.random(len(group))
        n_old = len(self.group)
        g = np.concatenate([self.group, group])
        kk = np.concatenate([self.key, key])
        order = np.lexsort((kk, g))  # by group, then key
        g_sorted = g[order]
        starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
        sizes = np.diff(np.r_[starts, len(g_sorted)])
        rank = np.arange(len(g_sorted)) - np.repeat(starts, sizes)
        keep = np.sort(order[rank < self.k])
        old_keep, new_keep = keep[keep < n_old], keep[keep >= n_old] - n_old
        new_payload = {name: np.asarray(v) for name, v in payload_fn(new_keep).items()}
        if self.payload and set(new_payload) != set(self.payload):
            raise ValueError(f"payload keys changed from {sorted(self.payload)} to {sorted(new_payload)}")
        self.payload = {
            name: np.concatenate([self.payload[name][old_keep], v]) if name in self.payload else v
            for name, v in new_payload.items()
        }
        self.group = np.concatenate([self.group[old_keep], group[new_keep]])
        self.key = np.concatenate([self.key[old_keep], key[new_keep]])

    def sorted(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(group, key, payload) ordered by group, then key."""
        order = np.lexsort((self.key, self.group))
        return self.group[order], self.key[order], {n: v[order] for n, v in self.payload.items()}


# ---------------------------------------------------------------- token statistics
class TokenCounter:
    """Streaming co-occurrence counts of firing (per subcomponent) with a token id.

    The joint counts n(c, v) are kept sparse (only pairs that occurred), so the memory grows with
    the number of distinct (subcomponent, token) pairs seen, not with C x vocabulary.
    """
    CONSOLIDATE_AT = 1 << 21  # pending sparse entries before they are merged

    def __init__(self, C: int, vocab_size: int):
        self.C, self.V = C, vocab_size
        self.keys = torch.empty(0, dtype=torch.int64)  # sorted unique c * V + v
        self.counts = torch.empty(0, dtype=torch.int64)  # n(c, v) for each key
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._n_pending = 0
        self.token = torch.zeros(vocab_size, dtype=torch.int64)  # n(v)
        self.fire = torch.zeros(C, dtype=torch.int64)  # n(c)
        self.n = 0  # N

    def update(self, tokens: torch.Tensor, firing: torch.Tensor) -> None:
        """tokens [...] int, firing [..., C] bool (same leading shape)."""
        tokens = tokens.reshape(-1).long().cpu()
        firing = firing.reshape(-1, self.C).cpu()
        if tokens.numel() and (int(tokens.max()) >= self.V or int(tokens.min()) < 0):
            raise ValueError(f"token ids must lie in [0, {self.V}), got range [{int(tokens.min())}, {int(tokens.max())}]")
        self.n += tokens.numel()
        self.token += torch.bincount(tokens, minlength=self.V)
        self.fire += firing.sum(0)
        pos, comp = firing.nonzero(as_tuple=True)
        if pos.numel():
            keys, counts = torch.unique(comp * self.V + tokens[pos], return_counts=True)
            self._pending.append((keys, counts))
            self._n_pending += len(keys)
            if self._n_pending >= self.CONSOLIDATE_AT:
                self._consolidate()

    def _consolidate(self) -> None:
        if not self._pending:
            return
        keys = torch.cat([self.keys] + [k for k, _ in self._pending])
        counts = torch.cat([self.counts] + [c for _, c in self._pending])
        self.keys, inverse = torch.unique(keys, return_inverse=True)
        self.counts = torch.zeros(len(self.keys), dtype=torch.int64).index_add_(0, inverse, counts)
        self._pending, self._n_pending = [], 0

    def table(self, top_k: int, pmi_min_count: int) -> pd.DataFrame:
        """Long table: for each c, its top_k tokens by recall and its top_k by PMI (n(c, v) >= pmi_min_count).

        Columns: c, rank_by ('recall' | 'pmi'), rank, token_id, count, recall, precision, pmi.
        Ties are broken by the smaller token id.
        """
        self._consolidate()
        c = (self.keys // self.V).numpy()
        v = (self.keys % self.V).numpy()
        joint = self.counts.numpy().astype(np.float64)
        n_c = self.fire.numpy().astype(np.float64)[c]
        n_v = self.token.numpy().astype(np.float64)[v]
        recall, precision = joint / n_c, joint / n_v
        pmi = np.log(joint * self.n / (n_c * n_v))
        base = pd.DataFrame({"c": c, "token_id": v, "count": self.counts.numpy(), "recall": recall,
                             "precision": precision, "pmi": pmi})
        parts = []
        for rank_by, score, eligible in (("recall", joint, joint > 0), ("pmi", pmi, joint >= pmi_min_count)):
            sel = np.flatnonzero(eligible)
            order = sel[np.lexsort((v[sel], -score[sel], c[sel]))]  # by c, then score desc, then token id
            part = base.iloc[order].copy()
            part.insert(1, "rank_by", rank_by)
            part.insert(2, "rank", part.groupby("c").cumcount().to_numpy())
            parts.append(part[part["rank"] < top_k])
        return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- the pass
@dataclass
class HarvestResult:
    subcomponents: pd.DataFrame  # one row per subcomponent
    examples: pd.DataFrame  # one row per sampled firing token
    token_stats: pd.DataFrame  # long table of top tokens
    meta: dict = field(default_factory=dict)

    def save(self, out_dir: str | Path, vocab: Optional[list[str]] = None) -> None:
        out_dir = Path(out_dir)
        for df, name in ((self.subcomponents, SUBCOMPONENTS_FILE), (self.examples, EXAMPLES_FILE),
                         (self.token_stats, TOKEN_STATS_FILE)):
            with atomic_path(out_dir / name) as tmp:
                df.to_parquet(tmp, index=False)
        if vocab is not None:
            write_json(out_dir / VOCAB_FILE, vocab)
        write_json(out_dir / META_FILE, self.meta)

    @classmethod
    def load(cls, in_dir: str | Path) -> "HarvestResult":
        in_dir = Path(in_dir)
        for f in (SUBCOMPONENTS_FILE, EXAMPLES_FILE, TOKEN_STATS_FILE, META_FILE):
            if not (in_dir / f).exists():
                raise FileNotFoundError(f"{in_dir / f} does not exist (run the harvest stage first)")
        return cls(
            pd.read_parquet(in_dir / SUBCOMPONENTS_FILE), pd.read_parquet(in_dir / EXAMPLES_FILE),
            pd.read_parquet(in_dir / TOKEN_STATS_FILE), read_json(in_dir / META_FILE),
        )


def _context_gather(values: torch.Tensor, b: np.ndarray, t: np.ndarray, c: np.ndarray, context: int) -> np.ndarray:
    """values [B, T, C] -> [n, 2*context+1] around (b, t) for component c; NaN outside the window."""
    T = values.shape[1]
    offs = np.arange(-context, context + 1)
    pos = t[:, None] + offs[None, :]  # [n, W]
    inside = (pos >= 0) & (pos < T)
    pos_c = np.clip(pos, 0, T - 1)
    out = values[torch.from_numpy(b)[:, None], torch.from_numpy(pos_c), torch.from_numpy(c)[:, None]]
    out = out.float().cpu().numpy()
    out[~inside] = np.nan
    return out


def harvest(
    dec,
    windows: torch.Tensor,
    cfg: HarvestConfig,
    *,
    seed: int = 0,
    vocab_size: Optional[int] = None,
    progress: bool = False,
) -> HarvestResult:
    """Harvest `dec` (a Decomposition) over `windows` [N, T+1] (inputs [:, :T], next tokens [:, 1:])."""
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [N, T+1] token ids with T >= 1, got shape {tuple(windows.shape)}")
    V = int(vocab_size or int(windows.max()) + 1)
    names, C = dec.names, dec.C
    rng = np.random.default_rng(seed)
    reservoirs = {n: Reservoir(cfg.n_examples, rng) for n in names}
    counters_in = {n: TokenCounter(C[n], V) for n in names}
    counters_next = {n: TokenCounter(C[n], V) for n in names}
    n_pos = {n: torch.zeros(C[n], dtype=torch.int64) for n in names}  # CI > 0
    n_fire = {n: torch.zeros(C[n], dtype=torch.int64) for n in names}  # CI > threshold
    ci_sum = {n: torch.zeros(C[n], dtype=torch.float64) for n in names}
    comps = {n: dec.components(n)[0].to(dec.device) for n in names}  # V [d_in, C]
    n_tokens = 0
    T = windows.shape[1] - 1
    batches = range(0, len(windows), cfg.batch_size)
    for start in tqdm(batches, desc="harvest", unit="batch", disable=not progress):
        chunk = windows[start:start + cfg.batch_size]
        inp, nxt = chunk[:, :T], chunk[:, 1:]
        _, xs = dec.matrix_inputs(inp)
        with torch.no_grad():
            ci_all, _ = dec.ci_from_inputs(xs)
        inp_np = inp.numpy()
        n_tokens += inp.numel()
        for n in names:
            ci = ci_all[n].detach().float().cpu()  # [B, T, C]
            act = (xs[n].float() @ comps[n].float()).cpu()  # [B, T, C]
            firing = ci > cfg.fire_threshold
            n_pos[n] += (ci > 0).sum((0, 1))
            n_fire[n] += firing.sum((0, 1))
            ci_sum[n] += ci.double().sum((0, 1))
            counters_in[n].update(inp, firing)
            counters_next[n].update(nxt, firing)
            b, t, c = (x.numpy() for x in firing.nonzero(as_tuple=True))

            def payload(idx, b=b, t=t, c=c, ci=ci, act=act):
                bb, tt, cc = b[idx], t[idx], c[idx]
                pos = tt[:, None] + np.arange(-cfg.context, cfg.context + 1)[None, :]
                inside = (pos >= 0) & (pos < T)
                toks = np.where(inside, inp_np[bb[:, None], np.clip(pos, 0, T - 1)], -1)
                return {
                    "window": start + bb, "position": tt, "tokens": toks,
                    "ci": _context_gather(ci, bb, tt, cc, cfg.context),
                    "act": _context_gather(act, bb, tt, cc, cfg.context),
                }

            reservoirs[n].offer(c, payload)

    sub_rows, ex_rows, tok_rows = [], [], []
    for n in names:
        short = [dec.subcomponent_name(n, c) for c in range(C[n])]
        sub_rows.append(pd.DataFrame({
            "matrix": n, "c": np.arange(C[n]), "name": short,
            "density_ci0": (n_pos[n].double() / max(1, n_tokens)).numpy(),
            "density": (n_fire[n].double() / max(1, n_tokens)).numpy(),
            "n_fire": n_fire[n].numpy(), "mean_ci": (ci_sum[n] / max(1, n_tokens)).numpy(),
        }))
        group, key, pl = reservoirs[n].sorted()
        if len(group):
            ex = pd.DataFrame({
                "matrix": n, "c": group, "name": [short[g] for g in group], "key": key,
                "window": pl["window"], "position": pl["position"],
            })
            # keep only the part of each example inside the harvested window
            inside = pl["tokens"] >= 0
            ex["offset"] = [int(cfg.context - np.argmax(row)) for row in inside]  # index of the firing token
            ex["tokens"] = [row[m].tolist() for row, m in zip(pl["tokens"], inside)]
            ex["ci"] = [row[m].tolist() for row, m in zip(pl["ci"], inside)]
            ex["act"] = [row[m].tolist() for row, m in zip(pl["act"], inside)]
            ex["rank"] = ex.groupby("c").cumcount()
            ex_rows.append(ex)
        for kind, counter in (("input", counters_in[n]), ("next", counters_next[n])):
            tab = counter.table(cfg.top_k_tokens, cfg.pmi_min_count)
            tab.insert(0, "kind", kind)
            tab.insert(0, "matrix", n)
            tok_rows.append(tab)
    ex_cols = ["matrix", "c", "name", "rank", "key", "window", "position", "offset", "tokens", "ci", "act"]
    meta = {
        "n_windows": int(len(windows)), "seq_len": int(T), "n_tokens": int(n_tokens), "vocab_size": V,
        "seed": int(seed), "fire_threshold": cfg.fire_threshold, "n_examples": cfg.n_examples,
        "context": cfg.context, "matrices": {n: int(C[n]) for n in names},
        "definitions": {
            "density_ci0": "share of harvested tokens with CI > 0",
            "density": f"share of harvested tokens with CI > {cfg.fire_threshold} (firing)",
            "recall": "n(c, v) / n(c): share of the subcomponent's firings on token v",
            "precision": "n(c, v) / n(v): share of token v's occurrences where the subcomponent fires",
            "pmi": "log(n(c, v) N / (n(c) n(v)))",
            "act": "component activation x . V_c",
        },
    }
    return HarvestResult(
        subcomponents=pd.concat(sub_rows, ignore_index=True),
        examples=pd.concat(ex_rows, ignore_index=True)[ex_cols] if ex_rows else pd.DataFrame(columns=ex_cols),
        token_stats=pd.concat(tok_rows, ignore_index=True),
        meta=meta,
    )


def token_texts(tok, vocab_size: int) -> list[str]:
    """Readable text of each token id (byte-level pieces decoded on their own)."""
    return [tok.decode([i]) for i in range(vocab_size)]


def resolve_seq_len(cfg_seq_len: Optional[int], project_cfg, context: int) -> int:
    seq_len = cfg_seq_len or project_cfg.decompose.seq_len or context
    if seq_len > context:
        raise ValueError(f"seq_len {seq_len} exceeds the target's context {context}")
    return int(seq_len)


def load_decomposition(project_cfg, target_dir: Path, decomposition_dir: Path):
    """(target, decomposition) on the default device in the configured precision."""
    device = default_device()
    return load(target_dir, decomposition_dir, dtype=resolve_precision(project_cfg.precision, device), device=device,
                expect=project_cfg.target.model)
