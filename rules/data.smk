# Data stage: the configured dataset in VOC layout, then YOLO labels and a manifest.


# Downloads run where Snakemake runs (a cluster's login node), not on compute nodes, which often
# have no internet.
localrules:
    download,


rule download:
    input:
        dataset_source_files,
    output:
        directory(f"{DATASET_DIR}/voc"),
    log:
        f"{DATASET_DIR}/logs/download.log",
    benchmark:
        f"{DATASET_DIR}/logs/download.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    params:
        dataset=config["dataset"],
        seed=config["seed"],
    script:
        "../workflow/scripts/download.py"


# The local source's files are inputs here too: when one is deleted or edited, the labels are
# stale even if the download's copy has gone (a failed copy is removed), so convert reruns,
# which reruns the copy, which names the source file that is missing.
rule convert:
    input:
        voc=f"{DATASET_DIR}/voc",
        source=dataset_source_files,
    output:
        directory(f"{DATASET_DIR}/yolo"),
    log:
        f"{DATASET_DIR}/logs/convert.log",
    benchmark:
        f"{DATASET_DIR}/logs/convert.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    params:
        dataset=config["dataset"],
    script:
        "../workflow/scripts/convert.py"
