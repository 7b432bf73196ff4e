"""Stage `train_target`: token shards in, trained target LM + validation curve + figure out.

Reads   <tokens>/{train.bin, val.bin, meta.json, tokenizer.json}
Writes  <out>/{model.safetensors, config.json, tokenizer.json, curve.csv, metrics.jsonl,
        probes.csv, probes_prompts.csv (the paper's probe tasks, `vpd.target.probes`),
        final_config.yaml, fig_target_curve.png, fig_target_curve.pdf, checkpoints/}
Rerunning after an interruption resumes from the newest valid checkpoint in <out>/checkpoints/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vpd.config import ProjectConfig
from vpd.data.tokenizer import load_tokenizer
from vpd.plots import save_figure
from vpd.plots.target import plot_target_curve
from vpd.target.probes import run_probes
from vpd.target.train import train_target
from vpd.utils.distributed import init_distributed
from vpd.utils.errors import InputError
from vpd.utils.io import read_json, sha256_file, write_bytes, write_csv, write_yaml
from vpd.target.memory import estimate_target_training_bytes
from vpd.utils.memory import check_memory
from vpd.utils.runtime import log, resolve_precision, reuse_freed_memory


INPUT_FILES = ("train.bin", "val.bin", "meta.json", "tokenizer.json")


def check_inputs(cfg: ProjectConfig, tokens_dir: Path) -> dict[str, str]:
    """Fail fast, naming the file, if an input is missing, changed since the tokenizer stage or
    unreadable, or the vocabularies disagree; return the inputs' sha256 (`input_digests`)."""
    missing = [str(tokens_dir / f) for f in INPUT_FILES if not (tokens_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"missing tokenizer-stage outputs: {', '.join(missing)} (run the tokenizer stage)")
    meta_path = tokens_dir / "meta.json"
    meta = read_json(meta_path)
    if "vocab_size" not in meta:
        raise InputError(f"{meta_path} has no `vocab_size` key")
    if meta["vocab_size"] != cfg.target.model.vocab_size:
        raise InputError(
            f"vocab_size {meta['vocab_size']} in {meta_path} differs from target.model.vocab_size "
            f"{cfg.target.model.vocab_size} in the config: retrain the tokenizer or fix the config"
        )
    digests = input_digests(tokens_dir)
    recorded = {"tokenizer.json": meta.get("tokenizer_sha256"), **{f"{s}.bin": h for s, h in meta.get("shard_sha256", {}).items()}}
    for name, want in recorded.items():
        if want is not None and digests[f"{name}_sha256"] != want:
            raise InputError(
                f"{tokens_dir / name} does not match the sha256 recorded in {meta_path} (changed or truncated "
                "since the tokenizer stage wrote it): rerun the tokenizer stage"
            )
    load_tokenizer(tokens_dir / "tokenizer.json")  # parses, or names the file
    return digests


def input_digests(tokens_dir: Path) -> dict[str, str]:
    """sha256 of every file the target is trained from (recorded in final_config.yaml)."""
    return {f"{name}_sha256": sha256_file(tokens_dir / name) for name in ("tokenizer.json", "train.bin", "val.bin")}


def probe_tables(model, tokens_dir: Path, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per-prompt table) of the probe tasks on `model`, with the tokenizer stage's
    tokenizer and its held-out shard (emoticons from val.bin)."""
    tok = load_tokenizer(Path(tokens_dir) / "tokenizer.json")
    meta = read_json(Path(tokens_dir) / "meta.json")
    val = np.memmap(Path(tokens_dir) / "val.bin", dtype=np.uint16, mode="r")
    return run_probes(model.float().cpu(), tok, int(meta["eot_id"]), val, model.cfg.context, seed)


def write_probes(model, tokens_dir: Path, out_dir: Path, seed: int) -> pd.DataFrame:
    """Run the probe tasks on the trained model and write probes.csv (summary) and
    probes_prompts.csv (every prompt)."""
    summary, prompts = probe_tables(model, tokens_dir, seed)
    write_csv(out_dir / "probes.csv", summary)
    write_csv(out_dir / "probes_prompts.csv", prompts)
    for r in summary.itertuples():
        log.info("probe %s, %s: %.4g (n %d)", r.probe, r.quantity, r.value, r.n)
    return summary


def run_train_target(cfg: ProjectConfig, tokens_dir: Path, out_dir: Path, *, stop_after: int | None = None) -> None:
    """Train the target LM on `tokens_dir`'s shards and write the stage's outputs to `out_dir`.

    `stop_after` (tests only) stops after that many updates, as if killed, writing no final outputs.
    """
    tokens_dir, out_dir = Path(tokens_dir), Path(out_dir)
    inputs = check_inputs(cfg, tokens_dir)
    dist = init_distributed(cfg.target.train.world_size, "target.train.world_size")
    device = dist.device
    if device.type == "cpu":
        reuse_freed_memory()  # no page faults on the per-step activations (~10% of a step)
    dtype = resolve_precision(cfg.precision, device)
    mcfg, tcfg = cfg.target.model, cfg.target.train
    log.info(
        "target: %d layers, d_model %d, %d steps x %d x %d tokens, %s on %s",
        mcfg.n_layer, mcfg.d_model, tcfg.steps, tcfg.batch_size, mcfg.context, dtype, device,
    )
    check_memory(estimate_target_training_bytes(mcfg, tcfg, device=device), device, what="train_target",
                 keys="target.train.batch_size, target.model.context or the target.model size "
                      "(or raise target.train.world_size)")
    result = train_target(
        mcfg, tcfg, tokens_dir / "train.bin", tokens_dir / "val.bin", out_dir,
        seed=cfg.seed, device=device, dtype=dtype, stop_after=stop_after, dist=dist,
    )
    if not result.finished or not dist.is_main:
        return  # rank 0 writes the outputs

    # curve.csv and metrics.jsonl are already complete; add the model, tokenizer and figure.
    model = result.model
    model.save_pretrained(out_dir)
    write_bytes(out_dir / "tokenizer.json", (tokens_dir / "tokenizer.json").read_bytes())
    final = {
        "seed": cfg.seed,
        "precision": cfg.precision,
        "resolved_precision": str(dtype).removeprefix("torch."),
        "target": cfg.target.model_dump(mode="json"),
        "parameters": model.num_params(non_embedding=False),
        "non_embedding_parameters": model.num_params(non_embedding=True),
        "flops_per_token": model.flops_per_token(),
        "final_val_ce": result.curve[-1]["val_ce"],
        "inputs": inputs,
    }
    summary = write_probes(model, tokens_dir, out_dir, cfg.seed)
    final["probes"] = {f"{r.probe} {r.quantity}": float(r.value) for r in summary.itertuples()}
    write_yaml(out_dir / "final_config.yaml", final)


    save_figure(plot_target_curve(pd.DataFrame(result.curve)), out_dir / "fig_target_curve")
    log.info("target done: val CE %.4f -> %.4f, outputs in %s", result.curve[0]["val_ce"], final["final_val_ce"], out_dir)
