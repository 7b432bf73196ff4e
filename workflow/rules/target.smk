# Stage 3: train the LLaMA-style target LM and log the validation curve that
# "pretraining compute recovered" reads. Checkpoints live in target/checkpoints/ (not a declared
# output), so a killed run resumes when the rule is run again.


rule train_target:
    input:
        tokens=rules.tokenizer.output,
        resolved_config=CONFIG_INPUT,
    output:
        model=f"{RESULTS}/target/model.safetensors",
        config=f"{RESULTS}/target/config.json",
        tokenizer=f"{RESULTS}/target/tokenizer.json",
        curve=f"{RESULTS}/target/curve.csv",
        probes=f"{RESULTS}/target/probes.csv",
        probes_prompts=f"{RESULTS}/target/probes_prompts.csv",
        figure=f"{RESULTS}/target/fig_target_curve.png",
        figure_pdf=f"{RESULTS}/target/fig_target_curve.pdf",
    params:
        section=config["target"],
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        launch=launcher(config["target"]["train"]["world_size"]),
        tokens=folder_of("tokens"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/train_target.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_target.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads(config["target"]["train"]["world_size"])
    resources:
        mem_mb=8000,
        runtime=120,
        processes=config["target"]["train"]["world_size"],  # torchrun ranks (the Slurm profile asks for as many GPUs)
    shell:
        "{params.launch} train_target --config {input.resolved_config} --threads {threads} --tokens {params.tokens} --out {params.out} 2>&1 | tee {log}"
