# Stage 4: VPD decomposition of every configured weight matrix of the target. Checkpoints live in
# decomposition/checkpoints/ (not a declared output), so a killed run resumes when rerun.


rule decompose:
    input:
        rules.train_target.output,
        resolved_config=CONFIG_INPUT,
    output:
        components=f"{RESULTS}/decomposition/components.safetensors",
        ci_fn=f"{RESULTS}/decomposition/ci_fn.safetensors",
        meta=f"{RESULTS}/decomposition/decomposition.json",
        config=f"{RESULTS}/decomposition/final_config.yaml",
        metrics=f"{RESULTS}/decomposition/metrics.jsonl",
        losses=f"{RESULTS}/decomposition/fig_losses.png",
        l0=f"{RESULTS}/decomposition/fig_l0.png",
    params:
        section=config["decompose"],
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=f"{RESULTS}/target",
        tokens=f"{RESULTS}/tokenizer",
        out=f"{RESULTS}/decomposition",
    log:
        f"{RESULTS}/logs/decompose.log",
    benchmark:
        f"{RESULTS}/benchmarks/decompose.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads(config["decompose"]["world_size"])
    resources:
        mem_mb=16000,
        runtime=600,
        processes=config["decompose"]["world_size"],  # torchrun ranks (the Slurm profile asks for as many GPUs)
    shell:
        "{DECOMPOSE_LAUNCH} decompose {CONFIG_ARG} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--out {params.out} 2>&1 | tee {log}"
