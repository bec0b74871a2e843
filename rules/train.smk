# Train stage: one job per cell {model, batch, epochs} of the grid.


localrules:
    download_weights,


rule download_weights:
    output:
        "results/weights/{weights_file}",
    log:
        "results/weights/logs/{weights_file}.log",
    conda:
        "../envs/data.yaml"
    params:
        local_dir=config["weights_dir"],
    script:
        "../workflow/scripts/download_weights.py"


rule train:
    input:
        unpack(train_inputs),
        unpack(image_caches("train")),
    output:
        weights=f"{CELL}/{cells.WEIGHTS}",
        history=report(
            f"{CELL}/{cells.HISTORY}",
            caption="../report/history.rst",
            category="Training time",
            labels={
                "platform": "{platform}",
                "model": "{model}",
                "batch": "{batch}",
                "epochs": "{epochs}",
                "repeat": "{repeat_suffix}",
                "table": "history",
            },
        ),
        record=f"{CELL}/{cells.RUN_RECORD}",
        gpu_samples=f"{CELL}/{cells.GPU_SAMPLES}",
    log:
        f"{CELL}/logs/train.log",
    benchmark:
        f"{CELL}/logs/train.benchmark.tsv"
    # On a cluster a cell's train and evaluate jobs are one submission (profiles/slurm).
    group:
        "cell"
    conda:
        "../envs/train.yaml"
    threads: 4
    resources:
        # Minutes of wall time for a scheduler; one Slurm task and one GPU per rank of the cell
        # (train.ranks over train.nodes), the threads split over the tasks (detbench.cluster.ranks).
        runtime=train_runtime,
        tasks=partial(ranks.rank_tasks, config),
        tasks_per_gpu=1,
        gpu=partial(ranks.rank_gpus, config),
        nodes=partial(ranks.rank_nodes, config),
        cpus_per_task=partial(ranks.rank_cpus_per_task, config),
    params:
        config=train_config,
        resume_dir=resume_dir,
    script:
        "../workflow/scripts/train.py"
