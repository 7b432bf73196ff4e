# Stage 11: attention through q/k subcomponents: previous-token scores of the target, per-head norms,
# the static pair interaction grid through RoPE, and a one-position ablation of query subcomponents.


rule attention:
    input:
        target=rules.train_target.output,
        decomposition=rules.decompose.output,
        tokens=rules.tokenizer.output,
        resolved_config=CONFIG_INPUT,
    output:
        prev=f"{RESULTS}/attention/prev_token_scores.csv",
        norms=f"{RESULTS}/attention/qk_comp_weight_norm.csv",
        grid=f"{RESULTS}/attention/attn_contrib_grid.csv",
        pairs=f"{RESULTS}/attention/attention_pairs.csv",
        ablation=f"{RESULTS}/attention/attn_patterns_q_intv.csv",
        summary=f"{RESULTS}/attention/summary.json",
        config=f"{RESULTS}/attention/final_config.yaml",
        fig_prev=f"{RESULTS}/attention/fig_prev_token_scores.png",
        fig_prev_pdf=f"{RESULTS}/attention/fig_prev_token_scores.pdf",
        fig_norm=f"{RESULTS}/attention/fig_qk_comp_weight_norm.png",
        fig_norm_pdf=f"{RESULTS}/attention/fig_qk_comp_weight_norm.pdf",
        fig_grid=f"{RESULTS}/attention/fig_attn_contrib_grid.png",
        fig_grid_pdf=f"{RESULTS}/attention/fig_attn_contrib_grid.pdf",
        fig_ablation=f"{RESULTS}/attention/fig_attn_patterns_q_intv.png",
        fig_ablation_pdf=f"{RESULTS}/attention/fig_attn_patterns_q_intv.pdf",
    params:
        section=config.get("attention", {}),
        seed=config["seed"],
        target=folder_of("target"),
        tokens=folder_of("tokens"),
        decomposition=folder_of("decomposition"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/attention.log",
    benchmark:
        f"{RESULTS}/benchmarks/attention.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m vpd attention --config {input.resolved_config} --threads {threads} --target {params.target} --decomposition {params.decomposition} "
        "--tokens {params.tokens} --out {params.out} 2>&1 | tee {log}"
