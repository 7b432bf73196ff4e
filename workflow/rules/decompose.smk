# Stage 4: VPD decomposition of every configured weight matrix of the target. Checkpoints live in
# decomposition/checkpoints/ (not a declared output), so a killed run resumes when rerun.


rule decompose:
    input:
        target=rules.train_target.output,
        tokens=rules.tokenizer.output,
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
        launch=launcher(config["decompose"]["world_size"]),
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/decompose.log",
    benchmark:
        f"{RESULTS}/benchmarks/decompose.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads(config["decompose"]["world_size"])
    resources:
        mem_mb=16000,
        runtime=training_runtime("decompose", config["decompose"]["steps"]),
        processes=config["decompose"]["world_size"],  # torchrun ranks (the Slurm profile asks for as many GPUs)
    shell:
        "{params.launch} decompose --config {input.resolved_config} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--out {params.out} 2>&1 | tee {log}"


# An extra VPD run of the sweeps (vpd.sweeps.variant_jobs), launched like `decompose`; checkpoints
# in variants/<name>/checkpoints/ so a killed job resumes.
rule decompose_variant:
    input:
        target=rules.train_target.output,
        tokens=rules.tokenizer.output,
        resolved_config=CONFIG_INPUT,
    output:
        components=f"{RESULTS}/variants/{{variant}}/components.safetensors",
        ci_fn=f"{RESULTS}/variants/{{variant}}/ci_fn.safetensors",
        meta=f"{RESULTS}/variants/{{variant}}/decomposition.json",
        config=f"{RESULTS}/variants/{{variant}}/final_config.yaml",
        metrics=f"{RESULTS}/variants/{{variant}}/metrics.jsonl",
        losses=f"{RESULTS}/variants/{{variant}}/fig_losses.png",
        l0=f"{RESULTS}/variants/{{variant}}/fig_l0.png",
    wildcard_constraints:
        variant="[^/]+",
    params:
        section=config["decompose"],
        changes=variant_sections,
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        launch=launcher(config["decompose"]["world_size"]),
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/decompose_variant_{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/decompose_variant_{{variant}}.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads(config["decompose"]["world_size"])
    resources:
        mem_mb=16000,
        runtime=lambda wc: training_runtime("decompose", variant_steps(PROJECT, VARIANTS[wc.variant])),
        processes=config["decompose"]["world_size"],  # torchrun ranks (the Slurm profile asks for as many GPUs)
    shell:
        "{params.launch} decompose --config {input.resolved_config} --threads {threads} --target {params.target} --tokens {params.tokens} "
        "--variant {wildcards.variant} --out {params.out} 2>&1 | tee {log}"
