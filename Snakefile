# vpd-replication: the paper's stages as one DAG. Every rule is a thin call of `python -m vpd <stage>`;
# stages communicate only through files under results/<config name>/.
from snakemake.utils import min_version, validate

min_version("9.0")


# The default config, found beside this Snakefile whatever --directory is; --configfile files are
# merged over it (nested keys one by one), then --config overrides.
configfile: f"{workflow.basedir}/config/config.yaml"


envvars:
    "PATH",


validate(config, "workflow/schemas/config.schema.json")


include: "workflow/rules/common.smk"


localrules:
    resolved_config,


# The merged config (config files + --config overrides) that every stage reads, written by this job
# (never while the DAG is built, so a dry run or a second invocation changes nothing). Stages take it
# as an ancient() input, so rewriting it reruns nothing. It is a checkpoint because Snakemake (9.27)
# skips every job downstream of a job that must rerun when their only link to it is ancient(), even
# jobs with missing outputs; after a checkpoint the DAG is re-planned, so those jobs run in the same
# invocation. A dry run after a config change therefore lists only this job.
checkpoint resolved_config:
    output:
        RESOLVED_CONFIG,
    params:
        config=dict(config),  # any change of the merged config rewrites the file
    log:
        f"{RESULTS}/logs/resolved_config.log",
    run:
        write_yaml(output[0], params.config)
        Path(log[0]).write_text(f"wrote {output[0]}\n")


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
        rules.seeds.output if PROJECT.seeds else [],
        rules.adversary_ablation.output if PROJECT.adversary_ablation.enabled else [],
    default_target: True
