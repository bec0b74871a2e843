# Aggregate stage: every finished cell under results/, all platforms, into one table.


rule aggregate:
    input:
        metrics=summary_metrics,
        runs=summary_runs,
    output:
        summary=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Accuracy",
            labels={"table": "summary"},
        ),
        columns="results/summary.columns.json",
    log:
        "results/logs/aggregate.log",
    conda:
        "../envs/aggregate.yaml"
    script:
        "../workflow/scripts/aggregate.py"
