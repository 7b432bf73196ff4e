# Stage 5: the decomposition on the target's held-out windows: L0/alive/density, CE and KL per mask
# strategy, the PGD attack, and pretraining compute recovered against the target's curve.csv.


rule evaluate:
    input:
        target=rules.train_target.output,
        decomposition=rules.decompose.output,
        tokens=rules.tokenizer.output,
        resolved_config=CONFIG_INPUT,
    output:
        strategies=f"{RESULTS}/evaluation/mask_strategies.csv",
        pgd=f"{RESULTS}/evaluation/pgd_steps.csv",
        recovered=f"{RESULTS}/evaluation/compute_recovered.csv",
        l0_layer=f"{RESULTS}/evaluation/l0_by_layer.csv",
        l0_matrix=f"{RESULTS}/evaluation/l0_by_matrix.csv",
        paper=f"{RESULTS}/evaluation/paper_vs_ours.md",
        config=f"{RESULTS}/evaluation/final_config.yaml",
        fig_recovered=f"{RESULTS}/evaluation/fig_compute_recovered.png",
        fig_pgd=f"{RESULTS}/evaluation/fig_pgd.png",
        fig_l0=f"{RESULTS}/evaluation/fig_l0_by_layer.png",
    params:
        section=config["evaluate"],
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        decomposition=folder_of("decomposition"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m vpd evaluate --config {input.resolved_config} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--decomposition {params.decomposition} --out {params.out} 2>&1 | tee {log}"
