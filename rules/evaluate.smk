# Evaluate stage: each trained cell on the held-out split.


rule evaluate:
    input:
        unpack(image_caches("evaluate")),
        weights=f"{CELL}/{cells.WEIGHTS}",
        dataset=f"{DATASET_DIR}/yolo",
    output:
        metrics=f"{CELL}/{cells.METRICS}",
        detections=f"{CELL}/{cells.DETECTIONS}",
    log:
        f"{CELL}/logs/evaluate.log",
    benchmark:
        f"{CELL}/logs/evaluate.benchmark.tsv"
    # With its cell's train job, as one submission on a cluster (see rules/train.smk).
    group:
        "cell"
    conda:
        "../envs/train.yaml"
    threads: 4
    resources:
        # Its cell's Slurm job holds one task per rank (rules/train.smk); the group asks for
        # the larger of each resource over its jobs, so the CPUs per task are the train job's.
        cpus_per_task=partial(ranks.rank_cpus_per_task, config),
    params:
        config=evaluate_config,
    script:
        "../workflow/scripts/evaluate.py"
