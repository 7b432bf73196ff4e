# Stages 8-9: the harvest (what every subcomponent fires on, on held-out tokens) with the static
# component browser (fig:components-showcase), and the emoticon edit of one subcomponent against
# rank-1 LoRA baselines (fig:model-editing-pareto, fig:model-editing-heatmap).


rule harvest:
    input:
        target=rules.train_target.output,
        decomposition=rules.decompose.output,
        tokens=rules.tokenizer.output,
        resolved_config=CONFIG_INPUT,
    output:
        subcomponents=f"{RESULTS}/harvest/subcomponents.parquet",
        examples=f"{RESULTS}/harvest/examples.parquet",
        token_stats=f"{RESULTS}/harvest/token_stats.parquet",
        vocab=f"{RESULTS}/harvest/vocab.json",
        meta=f"{RESULTS}/harvest/harvest.json",
        config=f"{RESULTS}/harvest/final_config.yaml",
        browser=f"{RESULTS}/harvest/browser/index.html",
    params:
        section=config.get("harvest", {}),
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        decomposition=folder_of("decomposition"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/harvest.log",
    benchmark:
        f"{RESULTS}/benchmarks/harvest.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m vpd harvest --config {input.resolved_config} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--decomposition {params.decomposition} --out {params.out} 2>&1 | tee {log}"


rule edit:
    input:
        target=rules.train_target.output,
        decomposition=rules.decompose.output,
        tokens=rules.tokenizer.output,
        resolved_config=CONFIG_INPUT,
    output:
        subcomponents=f"{RESULTS}/edit/emoticon_subcomponents.csv",
        results=f"{RESULTS}/edit/edit_results.csv",
        tokens=f"{RESULTS}/edit/heatmap_tokens.csv",
        meta=f"{RESULTS}/edit/edit.json",
        config=f"{RESULTS}/edit/final_config.yaml",
        pareto=f"{RESULTS}/edit/fig_model-editing-pareto.png",
        pareto_pdf=f"{RESULTS}/edit/fig_model-editing-pareto.pdf",
        heatmap=f"{RESULTS}/edit/fig_model-editing-heatmap.png",
        heatmap_pdf=f"{RESULTS}/edit/fig_model-editing-heatmap.pdf",
    params:
        section=config.get("edit", {}),
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        decomposition=folder_of("decomposition"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/edit.log",
    benchmark:
        f"{RESULTS}/benchmarks/edit.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m vpd edit --config {input.resolved_config} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--decomposition {params.decomposition} --out {params.out} 2>&1 | tee {log}"
