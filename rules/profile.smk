# Profile stage: torch.profiler over a few real training steps, one job per {model, batch}
# (epochs do not change the kernels): the kernel table, the 2020 study's "average time of the
# biggest GPU activity" and a trace for chrome://tracing or Perfetto.


rule profile:
    input:
        unpack(image_caches("profile")),
        dataset=f"{DATASET_DIR}/yolo",
    output:
        kernels=report(
            f"{PROFILE}/kernels.csv",
            caption="../report/profile.rst",
            category="Resources",
            subcategory="Kernel tables (torch.profiler)",
            labels={
                "platform": "{platform}",
                "model": "{model}",
                "batch": "{batch}",
                "table": "kernels",
            },
        ),
        summary=f"{PROFILE}/summary.json",
        trace=f"{PROFILE}/trace.json.gz",
    log:
        f"{PROFILE}/logs/profile.log",
    benchmark:
        f"{PROFILE}/logs/profile.benchmark.tsv"
    # A group of its own on a cluster, which group-components may pack with cells.
    group:
        "cell"
    conda:
        "../envs/train.yaml"
    threads: 4
    resources:
        # Minutes of wall time for a scheduler (a few dozen steps); the GPU request is the
        # profile's (set-resources), as for train.
        runtime=30,
    params:
        config=profile_config,
    script:
        "../workflow/scripts/profile.py"
