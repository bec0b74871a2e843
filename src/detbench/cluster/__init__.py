"""The Slurm side: what a job asks for, whether it can ever start, and how ranks start.

- ``ranks``: a train job's tasks, GPUs, nodes and CPUs per task for its ranks;
- ``walltime``: the wall-time model (the ``runtime`` a scheduler is asked for);
- ``preflight``: each rule's sbatch request checked against the partition's nodes (sinfo)
  before anything is submitted;
- ``stuck_jobs``: the watcher that cancels this workflow's jobs that can never start;
- ``srun``: a cell's ranks as one srun step inside its Slurm job;
- ``job_record``: the job a train job runs in (scontrol, sacct, or the local run's start);
- ``efficiency``: what the jobs used of what they were given, and what a platform's jobs waited;
- ``rightsizing``: ``detbench resources``, requests from a finished study's measured peaks.

The executor plugin itself builds and submits the sbatch lines (``profiles/slurm``).
Standard library only, plus ``data.sizes``: the workflow imports it at parse time
(``rightsizing`` alone, never imported by the workflow, reads YAML and the study's cells).
"""
