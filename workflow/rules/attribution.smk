# Stage 10: attribution graphs of the configured prompts, each pruned by re-optimising its CIs with
# the adversary (graph_<prompt>) and without it (graph_<prompt>_<variant>).
from vpd.analysis.graph_config import AttributionConfig  # noqa: E402

ATTRIBUTION_STEMS = [s for _, _, s in AttributionConfig.model_validate(config.get("attribution", {})).graph_stems()]


rule attribution:
    input:
        target=rules.train_target.output,
        decomposition=rules.decompose.output,
        resolved_config=CONFIG_INPUT,
    output:
        table=f"{RESULTS}/attribution/graphs.csv",
        history=f"{RESULTS}/attribution/pruning_history.csv",
        config=f"{RESULTS}/attribution/final_config.yaml",
        graphs=expand(f"{RESULTS}/attribution/{{stem}}.json", stem=ATTRIBUTION_STEMS),
        figures=expand(f"{RESULTS}/attribution/fig_{{stem}}.png", stem=ATTRIBUTION_STEMS),
        figures_pdf=expand(f"{RESULTS}/attribution/fig_{{stem}}.pdf", stem=ATTRIBUTION_STEMS),
    params:
        section=config.get("attribution", {}),
        seed=config["seed"],
        target=folder_of("target"),
        decomposition=folder_of("decomposition"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/attribution.log",
    benchmark:
        f"{RESULTS}/benchmarks/attribution.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m vpd attribution --config {input.resolved_config} --threads {threads} --target {params.target} --decomposition {params.decomposition} "
        "--out {params.out} 2>&1 | tee {log}"
