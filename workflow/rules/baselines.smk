# Stages 6-7: BatchTopK transcoder baselines (PLT/CLT sweep) spliced into the target, the Pareto
# comparison with VPD (main run + importance-coefficient sweep), and feature splitting (VPD at
# several C against the baselines' transcoders at several dictionary sizes). Extra VPD runs keep
# their checkpoints in their own folders (not declared outputs), so a killed run resumes.


rule baselines:
    input:
        rules.train_target.output,
        rules.decompose.output,
        resolved_config=CONFIG_INPUT,
    output:
        transcoders=f"{RESULTS}/baselines/transcoders.csv",
        pareto=f"{RESULTS}/baselines/pareto.csv",
        summary=f"{RESULTS}/baselines/summary.json",
        config=f"{RESULTS}/baselines/final_config.yaml",
        figure=f"{RESULTS}/baselines/fig_pareto.png",
        figure_pdf=f"{RESULTS}/baselines/fig_pareto.pdf",
    params:
        section=config["baselines"],
        decompose=config["decompose"],
        evaluate=config["evaluate"],
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=f"{RESULTS}/target",
        tokens=f"{RESULTS}/tokenizer",
        decomposition=f"{RESULTS}/decomposition",
        out=f"{RESULTS}/baselines",
    log:
        f"{RESULTS}/logs/baselines.log",
    benchmark:
        f"{RESULTS}/benchmarks/baselines.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "{VPD} baselines {CONFIG_ARG} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--decomposition {params.decomposition} --out {params.out} 2>&1 | tee {log}"


rule feature_splitting:
    input:
        rules.train_target.output,
        rules.baselines.output,
        resolved_config=CONFIG_INPUT,
    output:
        splitting=f"{RESULTS}/feature_splitting/splitting.csv",
        matches=f"{RESULTS}/feature_splitting/splitting_matches.csv",
        config=f"{RESULTS}/feature_splitting/final_config.yaml",
        figure=f"{RESULTS}/feature_splitting/fig_feature_splitting.png",
        figure_pdf=f"{RESULTS}/feature_splitting/fig_feature_splitting.pdf",
        heatmap=f"{RESULTS}/feature_splitting/fig_splitting_heatmap.png",
        heatmap_pdf=f"{RESULTS}/feature_splitting/fig_splitting_heatmap.pdf",
    params:
        section=config["feature_splitting"],
        decompose=config["decompose"],
        evaluate=config["evaluate"],
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=f"{RESULTS}/target",
        tokens=f"{RESULTS}/tokenizer",
        baselines=f"{RESULTS}/baselines",
        out=f"{RESULTS}/feature_splitting",
    log:
        f"{RESULTS}/logs/feature_splitting.log",
    benchmark:
        f"{RESULTS}/benchmarks/feature_splitting.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "{VPD} feature_splitting {CONFIG_ARG} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--baselines {params.baselines} --out {params.out} 2>&1 | tee {log}"
