"""Command line: `python -m vpd <stage> --config <yaml> [inputs] --out <dir>`.

Every Snakemake rule calls one of these stages. The config is validated before any compute, and
stage modules are imported lazily so that `python -m vpd schema` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpd.config import ConfigError, json_schema, load_config
from vpd.utils.io import to_json
from vpd.utils.runtime import configure_threads, log, setup_logging


def _stage_corpus(cfg, args):
    from vpd.data.stage import run_corpus

    run_corpus(cfg, Path(args.out))


def _stage_tokenizer(cfg, args):
    from vpd.data.stage import run_tokenizer

    run_tokenizer(cfg, Path(args.corpus), Path(args.out))


def _stage_train_target(cfg, args):
    from vpd.target.stage import run_train_target

    run_train_target(cfg, Path(args.tokens), Path(args.out))


def _stage_decompose(cfg, args):
    from vpd.decomp.stage import run_decompose

    run_decompose(cfg, Path(args.target), Path(args.tokens), Path(args.out))


# stage name -> (runner, extra input directories it reads)
STAGES = {
    "corpus": (_stage_corpus, []),
    "tokenizer": (_stage_tokenizer, ["corpus"]),
    "train_target": (_stage_train_target, ["tokens"]),
    "decompose": (_stage_decompose, ["target", "tokens"]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (_, inputs) in STAGES.items():
        p = sub.add_parser(name)
        p.add_argument("--config", required=True, help="project config YAML")
        for inp in inputs:
            p.add_argument(f"--{inp}", required=True, help=f"{inp} stage output directory")
        p.add_argument("--out", required=True, help="output directory of this stage")
    sub.add_parser("schema", help="print the config JSON schema")
    p = sub.add_parser("validate", help="validate a config file and exit")
    p.add_argument("config")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.stage == "schema":
        sys.stdout.write(to_json(json_schema()))
        return 0
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.stage == "validate":
        print(f"{args.config}: valid")
        return 0
    for inp in STAGES[args.stage][1]:
        if not Path(getattr(args, inp)).is_dir():
            print(f"input directory --{inp} {getattr(args, inp)} does not exist", file=sys.stderr)
            return 2
    threads = configure_threads(cfg.threads)
    log.info("stage %s, config %s (%s), %d threads", args.stage, args.config, cfg.name, threads)
    STAGES[args.stage][0](cfg, args)
    return 0
