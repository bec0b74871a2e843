# Checks in the Snakemake process the user started, before any job runs (never in the jobs):
#   - a profile's platform label dropped by --config on the command line (invocation.py),
#   - each rule's Slurm request against the partition's nodes; jobs that can never start are
#     reported and cancelled during the run (detbench.cluster.stuck_jobs),
#   - cells that kept their metrics but lost other files are rebuilt (detbench.workflow.completeness),
#   - the logs of the jobs this run will run go before the first starts (onstart).

from snakemake.logging import logger
from snakemake_interface_executor_plugins.settings import ExecMode

from detbench.cluster.preflight import (
    check_requests,
    describe_requests,
    group_wall_times,
    read_nodes,
    rule_requests,
)
from detbench.cluster.status_loop import prompt_status_loop
from detbench.cluster.stuck_jobs import watch_stuck_jobs
from detbench.workflow.completeness import incomplete_cells, partial_cells
from detbench.workflow.invocation import check_profile_config_kept, current_invocation


def check_slurm_requests(invocation):
    """Stop before submitting when a rule asks for more than any node of its partition has;
    a dry run lists what each job will ask sbatch for."""
    requests = rule_requests(
        workflow.rules,
        # (the localrules names: Workflow.is_local needs the executor, unknown while parsing)
        local_rules=workflow._localrules,
        max_threads=workflow.resource_settings.max_threads,
    )
    try:
        nodes = read_nodes()
    except DetbenchError as error:
        if not invocation.dryrun:
            raise
        logger.warning(f"detbench: requests not checked against the cluster: {error}")
        nodes = None
    if invocation.dryrun:
        lines = describe_requests(requests, nodes)
        cells = [
            walltime.train_minutes(config, DATASET_DIR, cell, 1)
            for cell in grid.study_cells(config)
        ]
        evaluate = next((r for r in requests if r.rule == "evaluate"), None)
        group = group_wall_times(cells, evaluate)
        lines += [group] if group else []
        logger.info("detbench: Slurm jobs will ask sbatch for\n" + "\n".join(lines))
    if nodes is not None:
        check_requests(requests, nodes)


def cell_file_names():
    """The files of a complete cell: every output of train and evaluate."""
    return [Path(path).name for path in rules.train.output + rules.evaluate.output]


def remove_stale_evaluations(invocation):
    """Study cells that kept their metrics.json but lost other files: Snakemake would never
    rebuild them (a missing intermediate whose consumers exist) and would summarise stale
    metrics. Their evaluation goes, and with it the summary, so this run rebuilds them.
    """
    evaluation = Path(rules.evaluate.output.metrics).name
    folders = [cell.folder() for cell in grid.study_cells(config)]
    remove_stale_summary(invocation, folders)  # first: it sees the cells as they were
    for cell in incomplete_cells(folders, cell_file_names(), evaluation):
        logger.warning(f"detbench: {cell.describe(rebuilt=invocation.runs_jobs)}")
        if invocation.runs_jobs:
            for path in rules.evaluate.output:
                (cell.folder / Path(path).name).unlink(missing_ok=True)


def remove_stale_summary(invocation, folders):
    """A summary whose cells lost files (a cancelled job group removes a cell's train and
    evaluate outputs together) would stand as up to date: Snakemake does not rebuild missing
    inputs of an existing output. It goes, so the run rebuilds the cells and then it."""
    summary = Path(rules.aggregate.output.summary)
    gaps = partial_cells(folders, cell_file_names()) if summary.exists() else []
    if not gaps:
        return
    what = "is rebuilt" if invocation.runs_jobs else "a run (without -n) rebuilds it"
    logger.warning(
        f"detbench: {summary}: {len(gaps)} of its cells lack files ({gaps[0].folder}: "
        f"{', '.join(gaps[0].missing)}); the summary is stale and {what}"
    )
    if invocation.runs_jobs:
        for path in rules.aggregate.output:
            Path(path).unlink(missing_ok=True)


def run_checks():
    invocation = current_invocation()
    if invocation is None:
        return  # Snakemake's API, not a command line: nothing to compare with
    check_profile_config_kept(invocation, "platform", config["platform"])
    if invocation.executor == "slurm":
        check_slurm_requests(invocation)
    remove_stale_evaluations(invocation)


if workflow.exec_mode == ExecMode.DEFAULT:
    try:
        run_checks()
    except DetbenchError as error:
        raise WorkflowError(f"detbench error: {error}")


def remove_logs_of_jobs_to_run():
    """The logs of the jobs this run will run describe earlier runs: a job that never starts
    (the rest of a cell's Slurm job after its train job is cancelled) would otherwise have an
    old log shown as its own in the failure report. Snakemake deletes them only as each job
    starts; a resumed train job's earlier segments are kept beside its checkpoints."""
    for job in workflow.dag.needrun_jobs():
        for path in job.log:
            Path(path).unlink(missing_ok=True)


onstart:
    remove_logs_of_jobs_to_run()
    if workflow.executor_plugin.name == "slurm":
        watch_stuck_jobs(Path.cwd(), lambda line: logger.error(f"detbench: {line}"))
        # The run exits within seconds of its last job's end (detbench.cluster.status_loop).
        from snakemake_executor_plugin_slurm import Executor as SlurmExecutor

        prompt_status_loop(SlurmExecutor)
