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


# Only when dataset.image_cache resolves to disk (detbench.data.cache_plan.image_cache_mode): each
# split's images decoded once at the study's img_size, read by every train, evaluate and
# profile job instead of decoding them again (their inputs: common.smk's image_caches).
rule image_cache:
    input:
        dataset=f"{DATASET_DIR}/yolo",
    output:
        directory(f"{DATASET_DIR}/image_cache/{{split}}_{{img_size}}"),
    log:
        f"{DATASET_DIR}/logs/image_cache_{{split}}_{{img_size}}.log",
    benchmark:
        f"{DATASET_DIR}/logs/image_cache_{{split}}_{{img_size}}.benchmark.tsv"
    wildcard_constraints:
        split=r"[A-Za-z0-9][A-Za-z0-9._-]*",
        img_size=r"\d+",
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/image_cache.py"
