"""The harvest stage: top-activating examples per subcomponent and the component browser."""

from pathlib import Path

from vpd.analysis.browser import render_browser
from vpd.analysis.harvest import HarvestResult, harvest, load_decomposition, resolve_seq_len, token_texts
from vpd.data.tokenizer import load_tokenizer
from vpd.data.tokens import TokenShard
from vpd.utils.io import write_yaml
from vpd.utils.provenance import upstream_digests
from vpd.utils.runtime import log, start_stage


def run_harvest(cfg, target_dir: Path, tokens_dir: Path, decomposition_dir: Path, out_dir: Path) -> HarvestResult:
    """The `harvest` stage (see `vpd.analysis.harvest`)."""
    out_dir = start_stage(cfg.seed, out_dir)
    hcfg = cfg.harvest
    target, dec = load_decomposition(cfg, Path(target_dir), Path(decomposition_dir))
    seq_len = resolve_seq_len(hcfg.seq_len, cfg, target.cfg.context)
    val = TokenShard(Path(tokens_dir) / "val.bin", seq_len)
    windows = val.eval_windows(hcfg.n_windows)  # [N, seq_len + 1]
    if len(windows) < hcfg.n_windows:
        log.warning("harvest: val.bin holds only %d windows of %d tokens (asked for %d)", len(windows), seq_len, hcfg.n_windows)
    tok = load_tokenizer(Path(tokens_dir) / "tokenizer.json")
    vocab = token_texts(tok, target.cfg.vocab_size)
    log.info("harvest: %d windows x %d tokens, %d subcomponents", len(windows), seq_len, dec.total_C)
    result = harvest(dec, windows, hcfg, seed=cfg.seed, vocab_size=target.cfg.vocab_size, progress=True)
    result.meta["source"] = str(Path(tokens_dir) / "val.bin")
    result.save(out_dir, vocab)
    render_browser(result, vocab, out_dir / "browser")
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"),
        "inputs": upstream_digests(target=target_dir, tokens=tokens_dir, decomposition=decomposition_dir),
    })
    sub = result.subcomponents
    log.info("harvest: %d of %d subcomponents fire (CI > %g) at least once; browser at %s",
             int((sub["n_fire"] > 0).sum()), len(sub), hcfg.fire_threshold, out_dir / "browser" / "index.html")
    return result
