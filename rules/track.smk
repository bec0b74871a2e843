# Track stage (config key tracking, optional): each evaluated cell into MLflow, one run per
# cell found again by the cell's id, and a TensorBoard events file from its history. A light
# job (seconds): on a cluster it runs beside Snakemake, like the report jobs. Without the key
# no track job is planned and neither tool is imported.


localrules:
    track,


rule track:
    input:
        unpack(track_inputs),
    output:
        **track_outputs(),
    log:
        f"{CELL}/logs/track.log",
    conda:
        "../envs/tracking.yaml"
    params:
        tracking=track_settings,
        cost=summary_params(),
    script:
        "../workflow/scripts/track.py"
