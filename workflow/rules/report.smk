# Stage 12: the papermill notebooks (one per paper section, read-only) and paper/README.md, which
# links every output with the paper's number beside ours. Include after every stage it reads.

NOTEBOOK_INPUTS = {
    "01_target": [[rules.corpus.output.pronoun_support], rules.train_target.output],
    "02_decomposition": [rules.decompose.output, rules.evaluate.output, *([rules.seeds.output] if PROJECT.seeds else []),
                         *([rules.adversary_ablation.output] if PROJECT.adversary_ablation.enabled else [])],
    "03_pareto_splitting": [rules.baselines.output, rules.feature_splitting.output],
    "04_editing": [rules.harvest.output, rules.edit.output],
    "05_graphs": [rules.attribution.output],
    "06_attention": [rules.attention.output],
}


rule notebook:
    input:
        template=f"{workflow.basedir}/notebooks/{{section}}.ipynb",
        artifacts=lambda wc: [str(f) for outs in NOTEBOOK_INPUTS[wc.section] for f in outs],
        resolved_config=CONFIG_INPUT,
    output:
        f"{RESULTS}/notebooks/{{section}}.ipynb",
    wildcard_constraints:
        section="|".join(NOTEBOOK_INPUTS),
    params:
        section=config.get("report", {}),
        results=results_folder,
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/notebook_{{section}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/notebook_{{section}}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m vpd notebook --config {input.resolved_config} --threads {threads} --notebook {input.template} --results {params.results} "
        "--out {params.out} 2>&1 | tee {log}"


rule report:
    input:
        notebooks=expand(f"{RESULTS}/notebooks/{{section}}.ipynb", section=NOTEBOOK_INPUTS),
        artifacts=[str(f) for section in NOTEBOOK_INPUTS.values() for outs in section for f in outs],
        resolved_config=CONFIG_INPUT,
    output:
        readme=f"{RESULTS}/paper/README.md",
    params:
        section=config.get("report", {}),
        results=results_folder,
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m vpd report --config {input.resolved_config} --threads {threads} --results {params.results} --out {params.out} 2>&1 | tee {log}"
