# Aggregate stage: every finished cell under results/, all platforms, into one table.


rule aggregate:
    input:
        metrics=summary_files(cells.METRICS),
        runs=summary_files(cells.RUN_RECORD),
        inference=summary_inference,
        profiles=summary_profiles,
    output:
        summary=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Accuracy",
            labels={"table": "summary"},
        ),
        columns="results/summary.columns.json",
        stats=report(
            "results/summary_stats.csv",
            caption="../report/summary_stats.rst",
            category="Accuracy",
            labels={"table": "summary statistics over repeats"},
        ),
        stats_columns="results/summary_stats.columns.json",
    log:
        "results/logs/aggregate.log",
    conda:
        "../envs/aggregate.yaml"
    params:
        cost=summary_params(),
    script:
        "../workflow/scripts/aggregate.py"
