"""The `seeds` stage: the headline numbers over decomposition seeds, and seed MMCS.

Reads   <target>/, <tokens>/val.bin, <decomposition>/ and <evaluation>/ (the main run, seed `seed`),
        <variants>/seed_<s>/ and <variants>/seed_<s>/evaluation/ for every other entry of `seeds`,
        <transcoders>/<job>/ for the seeds comparison's transcoders (`vpd.sweeps.seed_transcoders`),
        and the two ends of each feature-splitting ratio at every seed: <variants>/<job>/ of
        `vpd.sweeps.seed_splitting_variants` and <transcoders>/<job>/ of `seed_splitting_transcoders`
Writes  <out>/{headline.csv, seed_mmcs.csv, final_config.yaml}

Pareto points per seed: VPD's main run at baselines.vpd_thresholds on the baselines stage's
held-out windows (MLP matrices masked, as in pareto.csv), and each seed transcoder's own point.
Alive sets for MMCS: VPD, mean CI > evaluate.alive_eps on the evaluation's held-out windows;
transcoders, latents that fired within the last baselines.train.dead_tokens training tokens.
Feature-splitting ratios per seed: alive counted as the feature_splitting stage counts them (on the
evaluation's held-out windows), so the run seed's ratios are those of splitting.csv.
"""

from __future__ import annotations

import time
from pathlib import Path

from safetensors.torch import load_file

from vpd.config import ProjectConfig
from vpd.data.tokens import eval_windows
from vpd.decomp import Decomposition
from vpd.evaluate.pareto import read_transcoder_point, vpd_pareto_points
from vpd.baselines.transcoders import Transcoder
from vpd.evaluate.seeds import (
    Factors,
    headline_table,
    pareto_quantities,
    seed_mmcs_table,
    splitting_quantities,
    transcoder_factors,
)
from vpd.evaluate.splitting import total_alive, transcoder_alive, vpd_alive
from vpd.sweeps import seed_runs, seed_splitting_transcoders, seed_splitting_variants, seed_transcoders
from vpd.target.model import load_target
from vpd.utils.errors import InputError
from vpd.utils.io import write_csv, write_yaml
from vpd.utils.provenance import labelled_digests, upstream_digests
from vpd.utils.runtime import default_device, log, resolve_precision, start_stage


def read_factors(folder: Path) -> Factors:
    """matrix -> (V [d_in, C], U [C, d_out]) from a decomposition's components.safetensors."""
    tensors = load_file(str(Path(folder) / "components.safetensors"))
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    return {n: (tensors[f"{n}.V"], tensors[f"{n}.U"]) for n in names}


def run_seeds(cfg: ProjectConfig, target_dir: Path, tokens_dir: Path, decomposition_dir: Path, evaluation_dir: Path,
              variants_dir: Path, transcoders_dir: Path, out_dir: Path) -> None:
    runs = seed_runs(cfg)
    if not runs:
        raise InputError("the seeds stage needs `seeds` in the config (at least two distinct seeds)")
    folders = {s: Path(decomposition_dir) if name is None else Path(variants_dir) / name for s, name in runs.items()}
    evals = {s: Path(evaluation_dir) if runs[s] is None else folders[s] / "evaluation" for s in runs}
    for s, f in evals.items():
        if not (f / "firing_counts.csv").exists():
            raise InputError(f"seed {s}: evaluation {f} is missing (run its evaluate job first)")
    tc_jobs = seed_transcoders(cfg)
    tc_folders = {kind: {s: Path(transcoders_dir) / job.name for s, job in by_seed.items()}
                  for kind, by_seed in tc_jobs.items()}
    split_vpd = {s: {m: Path(variants_dir) / job.name for m, job in by_m.items()}
                 for s, by_m in seed_splitting_variants(cfg).items()}
    split_tc = {kind: {s: {n: Path(transcoders_dir) / job.name for n, job in by_n.items()} for s, by_n in by_seed.items()}
                for kind, by_seed in seed_splitting_transcoders(cfg).items()}
    tc_needed = [(s, f) for by_seed in tc_folders.values() for s, f in by_seed.items()]
    tc_needed += [(s, f) for by_seed in split_tc.values() for s, by_n in by_seed.items() for f in by_n.values()]
    for s, f in tc_needed:
        if not (f / "transcoder.safetensors").exists():
            raise InputError(f"seed {s}: transcoder {f} is missing (run its transcoder job first)")
    for s, f in ((s, f) for s, by_m in split_vpd.items() for f in by_m.values()):
        if not (f / "decomposition.json").exists():
            raise InputError(f"seed {s}: splitting decomposition {f} is missing (run its decompose_variant job first)")
    out_dir = start_stage(cfg.seed, out_dir)
    device = default_device()
    dtype = resolve_precision(cfg.precision, device)
    t0 = time.perf_counter()

    target, _ = load_target(target_dir, device, expect=cfg.target.model)
    windows = eval_windows(cfg, tokens_dir, target.cfg.context)
    batch_size = cfg.evaluate.batch_size
    factors, alive, extra = {}, {}, {}
    for s, folder in folders.items():
        dec = Decomposition.load(folder, target, dtype=dtype, device=device)
        alive[s] = {n: m.cpu() for n, m in vpd_alive(dec, windows, batch_size, cfg.evaluate.alive_eps).items()}
        factors[s] = read_factors(folder)
        extra[s] = pareto_quantities(vpd_pareto_points(dec, target, windows, cfg.baselines.vpd_thresholds,
                                                        batch_size=batch_size, dtype=dtype))
        log.info("seed %d: %d alive subcomponents", s, total_alive(alive[s]))
    transcoders = {}
    for kind, by_seed in tc_folders.items():
        pairs = {s: transcoder_factors(Transcoder.load(f), cfg.baselines.train.dead_tokens) for s, f in by_seed.items()}
        transcoders[kind] = ({s: p[0] for s, p in pairs.items()}, {s: p[1] for s, p in pairs.items()})
        for s, f in by_seed.items():
            extra[s].update(pareto_quantities([read_transcoder_point(f)]))
    for s in runs:
        vpd_counts = {}
        for m, f in split_vpd[s].items():
            dec = Decomposition.load(f, target, dtype=dtype, device=device)
            vpd_counts[m] = total_alive(vpd_alive(dec, windows, batch_size, cfg.evaluate.alive_eps))
        tc_counts = {kind: {n: int(transcoder_alive(target, Transcoder.load(f, map_location=device).eval(), windows,
                                                    batch_size, cfg.baselines.inference, dtype).sum())
                            for n, f in by_seed[s].items()} for kind, by_seed in split_tc.items()}
        extra[s].update(splitting_quantities(vpd_counts, tc_counts))
        log.info("seed %d: splitting alive VPD %s, transcoders %s", s, vpd_counts, tc_counts)
    headline = headline_table(evals, threshold=min(cfg.evaluate.thresholds), extra=extra)
    mmcs = seed_mmcs_table(factors, alive, transcoders)

    write_csv(out_dir / "headline.csv", headline)
    write_csv(out_dir / "seed_mmcs.csv", mmcs)
    inputs = upstream_digests(target=target_dir, tokens=tokens_dir, decomposition=decomposition_dir)
    for name in filter(None, runs.values()):
        inputs.update(labelled_digests(f"variants/{name}", "decomposition", Path(variants_dir) / name))
    for by_m in split_vpd.values():
        for f in by_m.values():
            inputs.update(labelled_digests(f"variants/{f.name}", "decomposition", f))
    for _, f in tc_needed:
        inputs.update(labelled_digests(f"transcoders/{f.name}", "transcoder", f))
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"), "resolved_precision": str(dtype).removeprefix("torch."), "inputs": inputs,
        "seconds": round(time.perf_counter() - t0, 1),
    })
    log.info("seeds comparison over %s done, outputs in %s", sorted(runs), out_dir)
