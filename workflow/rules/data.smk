# Stage 1-2: real text corpus (pinned, sha256-verified sources) and the byte-level BPE tokenizer.


rule corpus:
    input:
        resolved_config=CONFIG_INPUT,
    output:
        train=f"{RESULTS}/corpus/train.jsonl",
        val=f"{RESULTS}/corpus/val.jsonl",
        manifest=f"{RESULTS}/corpus/manifest.json",
        stats=f"{RESULTS}/corpus/stats.json",
        pronoun_support=f"{RESULTS}/corpus/pronoun_support.csv",
    params:
        section=config["corpus"],
        seed=config["seed"],
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/corpus.log",
    benchmark:
        f"{RESULTS}/benchmarks/corpus.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m vpd corpus --config {input.resolved_config} --threads {threads} --out {params.out} 2>&1 | tee {log}"


rule tokenizer:
    input:
        corpus=rules.corpus.output,
        resolved_config=CONFIG_INPUT,
    output:
        tokenizer=f"{RESULTS}/tokenizer/tokenizer.json",
        train=f"{RESULTS}/tokenizer/train.bin",
        val=f"{RESULTS}/tokenizer/val.bin",
        meta=f"{RESULTS}/tokenizer/meta.json",
    params:
        section=config["tokenizer"],
        corpus=folder_of("corpus"),
        out=folder_of("output"),
    log:
        f"{RESULTS}/logs/tokenizer.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenizer.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m vpd tokenizer --config {input.resolved_config} --threads {threads} --corpus {params.corpus} --out {params.out} 2>&1 | tee {log}"
