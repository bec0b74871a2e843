"""A cell's history as a TensorBoard events file, written after training from history.csv.

The events go straight through tensorboard's ``RecordWriter`` and its protobufs into one file of a
fixed name, written atomically: no torch (``torch.utils.tensorboard`` imports it), no TensorFlow,
and no ``EventFileWriter`` (a writer thread, and a file name of its own with a time stamp, which
Snakemake could not declare as an output). The file lies in the cell folder, so
``tensorboard --logdir results`` shows each cell as a run named ``platform/model/cell``.
"""

from __future__ import annotations

from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from detbench import atomic
from detbench.tracking.record import CellExport

# TensorBoard groups scalars into sections by the part of the tag before '/'.
_EVAL_PREFIX = "eval_"


def scalar_tag(column: str) -> str:
    """The TensorBoard tag of a history.csv column: ``loss/train_box_loss``,
    ``eval/eval_map50``, ``optim/lr``, ``speed/images_per_second``."""
    if column.startswith(_EVAL_PREFIX):
        return f"eval/{column}"
    if column.endswith("_loss"):
        return f"loss/{column}"
    if column == "lr":
        return f"optim/{column}"
    return f"speed/{column}"


def write_events(export: CellExport, path: str | Path) -> Path:
    """Write ``export``'s history (a scalar per column and epoch, step = epoch) to ``path``."""
    path = Path(path)
    with atomic.atomic_open(path, "wb") as handle:
        writer = RecordWriter(handle)
        start = export.start_time_ms / 1000
        version = event_pb2.Event(wall_time=start, file_version="brain.Event:2")
        writer.write(version.SerializeToString())
        for row, time_ms in zip(export.history, export.epoch_times_ms(), strict=True):
            values = [
                summary_pb2.Summary.Value(tag=scalar_tag(column), simple_value=value)
                for column, value in row.values.items()
            ]
            event = event_pb2.Event(
                wall_time=time_ms / 1000,
                step=row.epoch,
                summary=summary_pb2.Summary(value=values),
            )
            writer.write(event.SerializeToString())
    return path
