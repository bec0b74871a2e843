# Report stage: the study's tables, the platform comparison, the findings and the plots, all
# under results/report/ and flagged for `snakemake --report report.html`. The 2020 study's
# published figures join as two more platforms, "(published 2020)". Light jobs (seconds of
# pandas and matplotlib): on a cluster they run beside Snakemake instead of queueing.


localrules:
    report_tables,
    report_comparison,
    report_findings,
    report_deployment,
    report_plots,
    report_dataset,
    report_waiting,


rule report_tables:
    input:
        summary="results/summary.csv",
        reference=report_reference(),
    output:
        report_files("tables"),
    log:
        "results/logs/report_tables.log",
    conda:
        "../envs/aggregate.yaml"
    params:
        layout=report_layout().to_params(),
    script:
        "../workflow/scripts/report_tables.py"


rule report_comparison:
    input:
        summary="results/summary.csv",
        reference=report_reference(),
    output:
        report_files("comparison"),
    log:
        "results/logs/report_comparison.log",
    conda:
        "../envs/aggregate.yaml"
    params:
        layout=report_layout().to_params(),
    script:
        "../workflow/scripts/report_comparison.py"


rule report_findings:
    input:
        summary="results/summary.csv",
        reference=report_reference(),
    output:
        report_files("findings"),
    log:
        "results/logs/report_findings.log",
    conda:
        "../envs/aggregate.yaml"
    params:
        layout=report_layout().to_params(),
    script:
        "../workflow/scripts/report_findings.py"


rule report_deployment:
    input:
        summary="results/summary.csv",
    output:
        report_files("deployment"),
    log:
        "results/logs/report_deployment.log",
    conda:
        "../envs/aggregate.yaml"
    script:
        "../workflow/scripts/report_deployment.py"


rule report_plots:
    input:
        summary="results/summary.csv",
        reference=report_reference(),
        histories=report_histories,
    output:
        report_files("plots"),
    log:
        "results/logs/report_plots.log",
    benchmark:
        "results/logs/report_plots.benchmark.tsv"
    conda:
        "../envs/aggregate.yaml"
    params:
        layout=report_layout().to_params(),
    script:
        "../workflow/scripts/report_plots.py"


rule report_dataset:
    input:
        dataset=f"{DATASET_DIR}/yolo",
    output:
        report_files("dataset"),
    log:
        "results/logs/report_dataset.log",
    conda:
        "../envs/aggregate.yaml"
    params:
        layout=report_layout().to_params(),
        dataset=config["dataset"],
    script:
        "../workflow/scripts/report_dataset.py"


rule report_waiting:
    input:
        summary="results/summary.csv",
    output:
        report_files("waiting"),
    log:
        "results/logs/report_waiting.log",
    conda:
        "../envs/aggregate.yaml"
    params:
        layout=report_layout().to_params(),
    script:
        "../workflow/scripts/report_waiting.py"


# A merged dataset (dataset.source: merge): its joint cells against the separate cells of its
# parts found under results/ (src/detbench/report/joint.py). Reads the cells' weights for their
# parameter counts, hence the training environment.
if report_layout().joint:

    localrules:
        report_joint,

    rule report_joint:
        input:
            metrics=summary_files(cells.METRICS),
            weights=joint_report_weights,
        output:
            report_files("joint_models"),
        log:
            "results/logs/report_joint.log",
        conda:
            "../envs/train.yaml"
        params:
            layout=report_layout().to_params(),
        script:
            "../workflow/scripts/report_joint.py"
