# vpd-replication: the paper's stages as one DAG. Every rule is a thin call of `python -m vpd <stage>`;
# stages communicate only through files under results/<config name>/.
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.json")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from vpd.config import ConfigError, parse_config  # noqa: E402
from vpd.utils.io import write_yaml  # noqa: E402

try:
    parse_config(config, "snakemake config")  # typed checks across sections (e.g. vocab sizes)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

RESULTS = f"results/{config['name']}"
SRC = str(Path(workflow.basedir) / "src")
# The merged config (config files + --config overrides) that every stage reads. The rule
# `resolved_config` writes it inside the run (never while the DAG is built, so a dry run or a
# second invocation changes nothing); stages take it as an `ancient` input, so rewriting it never
# reruns them: their per-section `params` do that.
RESOLVED_CONFIG = f"{RESULTS}/config.yaml"
CONFIG_INPUT = ancient(RESOLVED_CONFIG)
# Under --use-conda the env's `python` runs the package from src/; otherwise this interpreter does.
_use_conda = "conda" in str(workflow.deployment_settings.deployment_method).lower()
PYTHON = "python" if _use_conda else sys.executable
VPD = f"PYTHONPATH={SRC}:${{PYTHONPATH:-}} {PYTHON} -m vpd"


def launcher(world_size: int) -> str:
    """The command prefix of a training stage: `python -m vpd` for one process, torchrun with one
    rank per process (DDP; gloo on CPU, nccl on GPU) when the config asks for several."""
    if world_size == 1:
        return VPD
    return (f"PYTHONPATH={SRC}:${{PYTHONPATH:-}} {PYTHON} -m torch.distributed.run --standalone "
            f"--nproc_per_node {world_size} -m vpd")


def job_threads(processes: int = 1) -> int:
    """Cores of one job: `threads` (torch threads per process) times its processes, or every core
    when `threads` is null. With `threads` below --cores, independent jobs run side by side."""
    per_process = config["threads"] or max(1, workflow.cores // processes)
    return min(workflow.cores, per_process * processes)


TARGET_LAUNCH = launcher(config["target"]["train"]["world_size"])
DECOMPOSE_LAUNCH = launcher(config["decompose"]["world_size"])
CONFIG_ARG = f"--config {RESOLVED_CONFIG}"


localrules:
    resolved_config,


rule resolved_config:
    output:
        RESOLVED_CONFIG,
    params:
        config=dict(config),  # any change of the merged config rewrites the file
    run:
        write_yaml(output[0], params.config)


include: "workflow/rules/data.smk"
include: "workflow/rules/target.smk"
include: "workflow/rules/decompose.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/analysis_edit.smk"
include: "workflow/rules/attribution.smk"
include: "workflow/rules/attention.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.train_target.output,
        rules.decompose.output,
        rules.evaluate.output,
        rules.baselines.output,
        rules.feature_splitting.output,
        rules.harvest.output,
        rules.edit.output,
        rules.attribution.output,
        rules.attention.output,
        rules.report.output,
    default_target: True
