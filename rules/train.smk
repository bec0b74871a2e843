# Train stage: one job per cell {model, batch, epochs} of the grid.


rule train:
    input:
        dataset=f"{DATASET_DIR}/yolo",
    output:
        weights=f"{CELL}/weights.pt",
        history=report(
            f"{CELL}/history.csv",
            caption="../report/history.rst",
            category="Training time",
            labels={
                "platform": "{platform}",
                "model": "{model}",
                "batch": "{batch}",
                "epochs": "{epochs}",
                "table": "history",
            },
        ),
        record=f"{CELL}/run.json",
    log:
        f"{CELL}/logs/train.log",
    benchmark:
        f"{CELL}/logs/train.benchmark.tsv"
    conda:
        "../envs/train.yaml"
    threads: 4
    params:
        config=cell_config,
        resume_dir=resume_dir,
    script:
        "../workflow/scripts/train.py"
