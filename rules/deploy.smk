# Deploy stage: each trained cell exported to ONNX and served by every backend available here
# (PyTorch eager, AMP on a GPU, ONNX Runtime's providers): latency, throughput, memory, size and
# agreement with PyTorch on the evaluation split (detbench.deploy).


# After evaluate (metrics.json as an input): a cell's group then runs one job at a time, and
# Slurm is asked for its largest job's CPUs and memory, not for two branches' sum.
rule export_onnx:
    input:
        weights=f"{CELL}/{cells.WEIGHTS}",
        metrics=f"{CELL}/{cells.METRICS}",
    output:
        f"{CELL}/{cells.ONNX_MODEL}",
    log:
        f"{CELL}/logs/export_onnx.log",
    benchmark:
        f"{CELL}/logs/export_onnx.benchmark.tsv"
    # On the cell's platform, with its train and evaluate jobs (rules/train.smk).
    group:
        "cell"
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        cpus_per_task=partial(ranks.rank_cpus_per_task, config),
    script:
        "../workflow/scripts/export_onnx.py"


rule benchmark_inference:
    input:
        weights=f"{CELL}/{cells.WEIGHTS}",
        model=f"{CELL}/{cells.ONNX_MODEL}",
        dataset=f"{DATASET_DIR}/yolo",
    output:
        f"{CELL}/{cells.INFERENCE}",
    log:
        f"{CELL}/logs/benchmark_inference.log",
    benchmark:
        f"{CELL}/logs/benchmark_inference.benchmark.tsv"
    # With its cell's jobs, so it times the cell's own platform and GPU (rules/train.smk).
    group:
        "cell"
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        cpus_per_task=partial(ranks.rank_cpus_per_task, config),
    params:
        config=deploy_config,
    script:
        "../workflow/scripts/benchmark_inference.py"
