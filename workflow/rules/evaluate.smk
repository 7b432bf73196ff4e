# Stage 5: the decomposition on the target's held-out windows: L0/alive/density, dead and rarely
# firing subcomponents, CE and KL per mask strategy, the PGD attack, pretraining compute recovered
# against the target's curve.csv, the final loss terms and the generations showcase. With `seeds`,
# each seed variant is evaluated the same way and the `seeds` rule compares them.

EVALUATE_SHELL = (
    "python -m vpd evaluate --config {input.resolved_config} --threads {threads} --target {params.target} "
    "--tokens {params.tokens} --decomposition {params.decomposition} --out {params.out} 2>&1 | tee {log}"
)


rule evaluate:
    input:
        target=rules.train_target.output,
        decomposition=rules.decompose.output,
        tokens=rules.tokenizer.output,
        resolved_config=CONFIG_INPUT,
    output:
        **evaluation_outputs(f"{RESULTS}/evaluation"),
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
        EVALUATE_SHELL


# One seed variant of the seeds comparison, evaluated exactly as the main decomposition.
rule evaluate_seed:
    input:
        target=rules.train_target.output,
        decomposition=[f"{RESULTS}/variants/{{variant}}/{f}" for f in (*VARIANT_FILES, "metrics.jsonl")],
        tokens=rules.tokenizer.output,
        resolved_config=CONFIG_INPUT,
    output:
        **evaluation_outputs(f"{RESULTS}/variants/{{variant}}/evaluation"),
    wildcard_constraints:
        variant="seed_[0-9]+",
    params:
        section=config["evaluate"],
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        decomposition=folder_of("decomposition"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/evaluate_seed_{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_seed_{{variant}}.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        EVALUATE_SHELL


# The headline numbers over `seeds` (mean, std, min, max), with each seed's feature-splitting ratio,
# and the seed MMCS table.
rule seeds:
    input:
        target=rules.train_target.output,
        tokens=rules.tokenizer.output,
        decomposition=rules.decompose.output,
        evaluation=rules.evaluate.output,
        variants=variant_files("seed"),
        seed_evaluations=[f"{RESULTS}/variants/{n}/evaluation/{f}" for n in seed_variant_names()
                          for f in EVALUATION_FILES.values()],
        transcoders=transcoder_files(job.name for by_seed in seed_transcoders(PROJECT).values()
                                     for job in by_seed.values()),
        splitting_variants=variant_job_files(job for by_m in seed_splitting_variants(PROJECT).values()
                                             for job in by_m.values()),
        splitting_transcoders=transcoder_files(job.name for by_seed in seed_splitting_transcoders(PROJECT).values()
                                               for by_n in by_seed.values() for job in by_n.values()),
        resolved_config=CONFIG_INPUT,
    output:
        headline=f"{RESULTS}/seeds/headline.csv",
        mmcs=f"{RESULTS}/seeds/seed_mmcs.csv",
        config=f"{RESULTS}/seeds/final_config.yaml",
    params:
        seeds=config.get("seeds", []),
        evaluate=config["evaluate"],
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        decomposition=folder_of("decomposition"),
        evaluation=folder_of("evaluation"),
        variants=sweep_folder("variants"),
        transcoders=sweep_folder("transcoders"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/seeds.log",
    benchmark:
        f"{RESULTS}/benchmarks/seeds.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m vpd seeds --config {input.resolved_config} --threads {threads} --target {params.target} "
        "--tokens {params.tokens} --decomposition {params.decomposition} --evaluation {params.evaluation} "
        "--variants {params.variants} --transcoders {params.transcoders} --out {params.out} 2>&1 | tee {log}"


# fig:adv-vs-no-adv: CE at fixed source values r for the main config trained with and without the
# adversary (the two `adversary` variants, adversary_ablation.steps each).
rule adversary_ablation:
    input:
        target=rules.train_target.output,
        tokens=rules.tokenizer.output,
        variants=variant_files("adversary"),
        resolved_config=CONFIG_INPUT,
    output:
        table=f"{RESULTS}/adversary_ablation/ce_vs_source.csv",
        config=f"{RESULTS}/adversary_ablation/final_config.yaml",
        figure=f"{RESULTS}/adversary_ablation/fig_adv-vs-no-adv.png",
        figure_pdf=f"{RESULTS}/adversary_ablation/fig_adv-vs-no-adv.pdf",
    params:
        section=config.get("adversary_ablation", {}),
        evaluate=config["evaluate"],
        seed=config["seed"],
        precision=config.get("precision", "auto"),
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        variants=sweep_folder("variants"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/adversary_ablation.log",
    benchmark:
        f"{RESULTS}/benchmarks/adversary_ablation.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m vpd adversary_ablation --config {input.resolved_config} --threads {threads} --target {params.target} "
        "--tokens {params.tokens} --variants {params.variants} --out {params.out} 2>&1 | tee {log}"
