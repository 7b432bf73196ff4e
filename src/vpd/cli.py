"""Command line: `python -m vpd [--debug] <stage> --config <yaml> [inputs] --out <dir>`.

Every Snakemake rule calls one of these stages. The config is validated before any compute, and
stage modules are imported lazily so that `python -m vpd schema` stays fast. An error the user can
fix (`vpd.utils.errors`) prints one line and exits with code 2; `--debug` or `VPD_DEBUG=1` shows
its traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vpd.config import json_schema, load_config
from vpd.utils.errors import USER_OS_ERRORS, UserError, one_line
from vpd.utils.io import to_json
from vpd.utils.runtime import configure_threads, log, setup_logging


def _stage_corpus(cfg, args):
    from vpd.stages.data import run_corpus

    run_corpus(cfg, Path(args.out))


def _stage_tokenizer(cfg, args):
    from vpd.stages.data import run_tokenizer

    run_tokenizer(cfg, Path(args.corpus), Path(args.out))


def _stage_train_target(cfg, args):
    from vpd.stages.target import run_train_target

    run_train_target(cfg, Path(args.tokens), Path(args.out))


def _stage_decompose(cfg, args):
    from vpd.stages.decompose import run_decompose

    run_decompose(cfg, Path(args.target), Path(args.tokens), Path(args.out), variant=args.variant)


def _stage_evaluate(cfg, args):
    from vpd.stages.evaluate import run_evaluate

    run_evaluate(cfg, Path(args.target), Path(args.tokens), Path(args.decomposition), Path(args.out))


def _stage_transcoder(cfg, args):
    from vpd.stages.transcoder import run_transcoder

    run_transcoder(cfg, Path(args.target), Path(args.tokens), args.name, Path(args.out))


def _stage_baselines(cfg, args):
    from vpd.stages.baselines import run_baselines

    run_baselines(cfg, Path(args.target), Path(args.tokens), Path(args.decomposition), Path(args.transcoders),
                  Path(args.variants), Path(args.out))


def _stage_feature_splitting(cfg, args):
    from vpd.stages.feature_splitting import run_feature_splitting

    run_feature_splitting(cfg, Path(args.target), Path(args.tokens), Path(args.transcoders), Path(args.variants),
                          Path(args.out))


def _stage_seeds(cfg, args):
    from vpd.stages.seeds import run_seeds

    run_seeds(cfg, Path(args.target), Path(args.tokens), Path(args.decomposition), Path(args.evaluation),
              Path(args.variants), Path(args.transcoders), Path(args.out))


def _stage_adversary_ablation(cfg, args):
    from vpd.stages.adversary_ablation import run_adversary_ablation

    run_adversary_ablation(cfg, Path(args.target), Path(args.tokens), Path(args.variants), Path(args.out))


def _stage_harvest(cfg, args):
    from vpd.stages.harvest import run_harvest

    run_harvest(cfg, Path(args.target), Path(args.tokens), Path(args.decomposition), Path(args.out))


def _stage_edit(cfg, args):
    from vpd.stages.edit import run_edit

    run_edit(cfg, Path(args.target), Path(args.tokens), Path(args.decomposition), Path(args.out))


def _stage_attribution(cfg, args):
    from vpd.stages.attribution import run_attribution

    run_attribution(cfg, Path(args.target), Path(args.decomposition), Path(args.out))


def _stage_attention(cfg, args):
    from vpd.stages.attention import run_attention

    run_attention(cfg, Path(args.target), Path(args.decomposition), Path(args.tokens), Path(args.out))


def _stage_notebook(cfg, args):
    from vpd.report.notebooks import execute_notebook

    execute_notebook(cfg, Path(args.notebook), Path(args.results), Path(args.out))


def _stage_report(cfg, args):
    from vpd.report.readme import run_report

    run_report(cfg, Path(args.results), Path(args.out))


# stage name -> (runner, extra input directories it reads)
STAGES = {
    "corpus": (_stage_corpus, []),
    "tokenizer": (_stage_tokenizer, ["corpus"]),
    "train_target": (_stage_train_target, ["tokens"]),
    "decompose": (_stage_decompose, ["target", "tokens"]),
    "evaluate": (_stage_evaluate, ["target", "tokens", "decomposition"]),
    "transcoder": (_stage_transcoder, ["target", "tokens"]),
    "baselines": (_stage_baselines, ["target", "tokens", "decomposition", "transcoders"]),
    "feature_splitting": (_stage_feature_splitting, ["target", "tokens", "transcoders", "variants"]),
    "seeds": (_stage_seeds, ["target", "tokens", "decomposition", "evaluation", "variants", "transcoders"]),
    "adversary_ablation": (_stage_adversary_ablation, ["target", "tokens", "variants"]),
    "harvest": (_stage_harvest, ["target", "tokens", "decomposition"]),
    "edit": (_stage_edit, ["target", "tokens", "decomposition"]),
    "attribution": (_stage_attribution, ["target", "decomposition"]),
    "attention": (_stage_attention, ["target", "decomposition", "tokens"]),
    "notebook": (_stage_notebook, ["results"]),
    "report": (_stage_report, ["results"]),
}
# stage name -> extra arguments (flag, required, help)
STAGE_ARGS = {
    "notebook": [("notebook", True, "papermill template (.ipynb) to execute")],
    "transcoder": [("name", True, "transcoder of the baselines sweep, e.g. plt_L512_k8 (vpd.sweeps)")],
    "baselines": [("variants", True, "folder of the VPD variants' job folders (read only when "
                   "baselines.vpd_importance_coeffs is non-empty)")],
    "decompose": [("variant", False, "train this extra decomposition of the sweeps (e.g. coeff_0.001, split_2x) "
                   "instead of the main one")],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpd", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors (also VPD_DEBUG=1)")
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (_, inputs) in STAGES.items():
        p = sub.add_parser(name)
        p.add_argument("--config", required=True, help="project config YAML")
        for inp in inputs:
            p.add_argument(f"--{inp}", required=True, help=f"{inp} stage output directory")
        for flag, required, help_text in STAGE_ARGS.get(name, []):
            p.add_argument(f"--{flag}", required=required, help=help_text)
        p.add_argument("--out", required=True, help="output directory of this stage")
        p.add_argument("--threads", type=int, help="cores of this job (Snakemake's {threads}), shared by its "
                       "processes; overrides the config's `threads`")
    sub.add_parser("schema", help="print the config JSON schema")
    sub.add_parser("config-docs", help="print config/README.md (the key reference)")
    p = sub.add_parser("validate", help="validate a config file and exit")
    p.add_argument("config")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.stage == "schema":
        sys.stdout.write(to_json(json_schema()))
        return 0
    if args.stage == "config-docs":
        from vpd.config_docs import render

        sys.stdout.write(render())
        return 0
    debug = args.debug or os.environ.get("VPD_DEBUG", "") not in ("", "0")
    try:
        return _run(args)
    except (UserError, *USER_OS_ERRORS) as exc:
        if debug:
            raise
        print(f"vpd {args.stage}: error: {one_line(exc)} (traceback: --debug or VPD_DEBUG=1)", file=sys.stderr)
        return 2


def _run(args) -> int:
    cfg = load_config(args.config)
    if getattr(args, "threads", None):
        per_process = max(1, args.threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        cfg = cfg.model_copy(update={"threads": per_process})
    if args.stage == "validate":
        print(f"{args.config}: valid")
        return 0
    for inp in STAGES[args.stage][1]:
        if not Path(getattr(args, inp)).is_dir():
            raise FileNotFoundError(f"input directory --{inp} {getattr(args, inp)} does not exist")
    threads = configure_threads(cfg.threads)
    log.info("stage %s, config %s (%s), %d threads", args.stage, args.config, cfg.name, threads)
    STAGES[args.stage][0](cfg, args)
    return 0
