# detbench: train and benchmark YOLOv3 / YOLOv3-tiny over batch sizes x epochs on one platform.
#
#   snakemake --cores 2                          the study in config/config.yaml
#   snakemake --configfile config/demo.yaml -c2  the offline demo (synthetic data, CPU)
#   snakemake results/summary.csv                the summary of every platform under results/
#
# Stages, one rule file each: data (download, convert) -> train -> evaluate, deploy (ONNX
# export, inference benchmark) -> aggregate; track (optional: MLflow, TensorBoard) after
# evaluate.


from snakemake.utils import min_version

min_version("9.0")


# A config file given on the command line (--configfile) replaces config/config.yaml rather than
# being merged into it, so a small config never inherits models or splits from the study.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/profile.smk"
include: "rules/evaluate.smk"
include: "rules/deploy.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"
include: "rules/track.smk"
# Last: the checks read the rules above.
include: "rules/checks.smk"


rule all:
    default_target: True
    input:
        "results/summary.csv",
        report_targets(),
        track_targets(),
