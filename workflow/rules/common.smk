# Shared by every stage's job: the typed config, the results folder, the launch prefix of a stage,
# threads and cluster runtimes, and the jobs of the sweeps. Included first by the Snakefile.
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from vpd.config import ConfigError, parse_config  # noqa: E402
from vpd.sweeps import (  # noqa: E402
    seed_splitting_transcoders,
    seed_splitting_variants,
    seed_transcoders,
    splitting_transcoders,
    transcoder_jobs,
    variant_jobs,
    variant_steps,
)
from vpd.utils.io import write_yaml  # noqa: E402

try:
    PROJECT = parse_config(config, "snakemake config")  # typed checks across sections (e.g. vocab sizes)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

RESULTS = f"results/{config['name']}"
# Stages read the merged config as an `ancient` input, so rewriting it never reruns them: their
# per-section `params` do that.
RESOLVED_CONFIG = f"{RESULTS}/config.yaml"
CONFIG_INPUT = ancient(RESOLVED_CONFIG)

# Jobs run `python -m vpd` with the package from src/. Without --use-conda, `python` is this
# interpreter (its folder goes first on PATH); under --use-conda it is the environment's.
# PATH is asserted by the Snakefile's envvars directive.
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (str(Path(workflow.basedir) / "src"), os.getenv("PYTHONPATH")) if p))
if "conda" not in str(workflow.deployment_settings.deployment_method).lower():
    os.environ.update(PATH=os.pathsep.join((str(Path(sys.executable).parent), os.getenv("PATH", ""))))


def launcher(world_size: int) -> str:
    """The command prefix of a training stage: `python -m vpd` for one process, torchrun with one
    rank per process (DDP; gloo on CPU, nccl on GPU) when the config asks for several."""
    if world_size == 1:
        return "python -m vpd"
    return f"python -m torch.distributed.run --standalone --nproc_per_node {world_size} -m vpd"


def job_threads(processes: int = 1) -> int:
    """Cores of one job: `threads` (torch threads per process) times its processes, or every core
    when `threads` is null. With `threads` below --cores, independent jobs run side by side."""
    per_process = config["threads"] or max(1, workflow.cores // processes)
    return min(workflow.cores, per_process * processes)


def folder_of(name: str):
    """A params function: the folder of the named input (or, for "output", of the first output)."""

    def fn(wildcards, input, output):
        files = output if name == "output" else input[name]
        return str(Path(files if isinstance(files, str) else files[0]).parent)

    return fn


def sweep_folder(kind: str):
    """A params function: the folder holding one job folder per trained model of a sweep
    (`transcoders` or `variants`): two levels above the files of the input named `kind`
    (results/<name>/<kind> when that input is empty)."""

    def fn(wildcards, input):
        files = input.get(kind) or []
        files = [files] if isinstance(files, str) else list(files)
        return str(Path(files[0]).parent.parent) if files else f"{RESULTS}/{kind}"

    return fn


def results_folder(wildcards, output):
    """The run's results folder (two levels above a notebook or the report's README)."""
    return str(Path(output[0]).parent.parent)


# Cluster wall time of a training job from its steps (local runs ignore `runtime`): the seconds per
# step below are planning figures for one job on its GPUs (decompose: the paper's 400k steps in
# about 7 days on world_size GPUs), with a 25% margin, at least 30 minutes; a job that still runs
# out resumes from its checkpoints (restart-times). Override per rule with --set-resources.
SECONDS_PER_STEP = {"decompose": 1.5, "transcoder": 0.1}
RUNTIME_MARGIN = 1.25


def training_runtime(kind: str, steps: int) -> int:
    return max(30, math.ceil(RUNTIME_MARGIN * steps * SECONDS_PER_STEP[kind] / 60))


# The sweeps' trained models, one job each (vpd.sweeps).
TRANSCODERS = {job.name: job for job in transcoder_jobs(PROJECT)}
VARIANTS = {job.name: job for job in variant_jobs(PROJECT)}
TRANSCODER_FILES = ("transcoder.safetensors", "cfg.json", "local.csv", "pareto_point.json")
VARIANT_FILES = ("components.safetensors", "ci_fn.safetensors", "decomposition.json")


def transcoder_files(names):
    return [f"{RESULTS}/transcoders/{n}/{f}" for n in names for f in TRANSCODER_FILES]


def variant_files(purpose: str):
    return [f"{RESULTS}/variants/{n}/{f}" for n, job in VARIANTS.items() if job.purpose == purpose for f in VARIANT_FILES]


def variant_job_files(jobs):
    return [f"{RESULTS}/variants/{job.name}/{f}" for job in jobs for f in VARIANT_FILES]


def seed_variant_names():
    return [n for n, job in VARIANTS.items() if job.purpose == "seed"]


def variant_sections(wildcards):
    """What a variant's decomposition is made from: its own settings and the section they change."""
    job = VARIANTS[wildcards.variant]
    if job.purpose == "pareto":
        return {"variant": job.as_dict(), "vpd_steps": config["baselines"]["vpd_steps"]}
    if job.purpose == "seed":
        return {"variant": job.as_dict()}
    if job.purpose == "adversary":
        return {"variant": job.as_dict(), "steps": PROJECT.adversary_ablation.steps}
    fs = config["feature_splitting"]
    return {"variant": job.as_dict(),
            **{k: fs[k] for k in ("matrices", "steps", "faithfulness_warmup_steps", "batch_size", "seq_len")}}


# The evaluate stage's files (rules evaluate and evaluate_seed).
EVALUATION_FILES = {
    "strategies": "mask_strategies.csv",
    "pgd": "pgd_steps.csv",
    "recovered": "compute_recovered.csv",
    "l0_layer": "l0_by_layer.csv",
    "l0_matrix": "l0_by_matrix.csv",
    "firing": "firing_counts.csv",
    "losses": "vpd_losses.csv",
    "generations": "generations.csv",
    "generations_md": "generations.md",
    "paper": "paper_vs_ours.md",
    "config": "final_config.yaml",
    "fig_recovered": "fig_compute_recovered.png",
    "fig_pgd": "fig_pgd.png",
    "fig_l0": "fig_l0_by_layer.png",
}


def evaluation_outputs(folder):
    """The evaluate stage's declared files in `folder`, keyed for named outputs."""
    return {key: f"{folder}/{name}" for key, name in EVALUATION_FILES.items()}
