# Stages 6-7: BatchTopK transcoder baselines (PLT/CLT), the Pareto comparison with VPD (main run +
# importance-coefficient sweep) and feature splitting (VPD at several C against transcoders at
# several dictionary sizes). Every trained model is its own job: `transcoder` per (kind, n_latents,
# k), `decompose_variant` (decompose.smk) per extra VPD run; `baselines` and `feature_splitting`
# only read and compare them.


wildcard_constraints:
    transcoder=r"(plt|clt)_L\d+_k\d+(_s\d+)?",



rule transcoder:
    input:
        target=rules.train_target.output,
        tokens=rules.tokenizer.output,
        resolved_config=CONFIG_INPUT,
    output:
        weights=f"{RESULTS}/transcoders/{{transcoder}}/transcoder.safetensors",
        cfg=f"{RESULTS}/transcoders/{{transcoder}}/cfg.json",
        local=f"{RESULTS}/transcoders/{{transcoder}}/local.csv",
        point=f"{RESULTS}/transcoders/{{transcoder}}/pareto_point.json",
        metrics=f"{RESULTS}/transcoders/{{transcoder}}/metrics.jsonl",
        config=f"{RESULTS}/transcoders/{{transcoder}}/final_config.yaml",
    params:
        train=config["baselines"]["train"],
        inference=config["baselines"]["inference"],
        evaluate=config["evaluate"],
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/transcoder_{{transcoder}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/transcoder_{{transcoder}}.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=training_runtime("transcoder", config["baselines"]["train"]["steps"]),
    shell:
        "python -m vpd transcoder --config {input.resolved_config} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--name {wildcards.transcoder} --out {params.out} 2>&1 | tee {log}"


rule baselines:
    input:
        target=rules.train_target.output,
        tokens=rules.tokenizer.output,
        decomposition=rules.decompose.output,
        transcoders=transcoder_files(TRANSCODERS),
        variants=variant_files("pareto"),
        resolved_config=CONFIG_INPUT,
    output:
        transcoders=f"{RESULTS}/baselines/transcoders.csv",
        pareto=f"{RESULTS}/baselines/pareto.csv",
        summary=f"{RESULTS}/baselines/summary.json",
        config=f"{RESULTS}/baselines/final_config.yaml",
        figure=f"{RESULTS}/baselines/fig_pareto.png",
        figure_pdf=f"{RESULTS}/baselines/fig_pareto.pdf",
    params:
        vpd_thresholds=config["baselines"]["vpd_thresholds"],
        evaluate=config["evaluate"],
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        decomposition=folder_of("decomposition"),
        transcoders=sweep_folder("transcoders"),
        variants=sweep_folder("variants"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/baselines.log",
    benchmark:
        f"{RESULTS}/benchmarks/baselines.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m vpd baselines --config {input.resolved_config} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--decomposition {params.decomposition} --transcoders {params.transcoders} --variants {params.variants} "
        "--out {params.out} 2>&1 | tee {log}"


rule feature_splitting:
    input:
        target=rules.train_target.output,
        tokens=rules.tokenizer.output,
        transcoders=transcoder_files(job.name for job in splitting_transcoders(PROJECT)),
        variants=variant_files("splitting"),
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
        evaluate=config["evaluate"],
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        transcoders=sweep_folder("transcoders"),
        variants=sweep_folder("variants"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/feature_splitting.log",
    benchmark:
        f"{RESULTS}/benchmarks/feature_splitting.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m vpd feature_splitting --config {input.resolved_config} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--transcoders {params.transcoders} --variants {params.variants} --out {params.out} 2>&1 | tee {log}"
