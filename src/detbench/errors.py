"""The one exception type users see: its message is a single line naming the file or key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DetbenchError(Exception):
    """A problem with the user's input (config, dataset, weights file...).

    The message must be one line that names the file or config key and says what is wrong,
    e.g. ``"data/Annotations/x.xml: not well-formed XML (line 3, column 1)"``.
    """


def read_json(path: Path, *, missing: str) -> Any:
    """The JSON document in ``path``. A missing file (``missing`` says what that means) or
    invalid JSON is a DetbenchError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DetbenchError(f"{path}: {missing}") from None
    except json.JSONDecodeError as exc:
        raise DetbenchError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


class FileProblem(DetbenchError):
    """A DetbenchError about one file, keeping the file and the problem apart so that a caller
    can collect many (conversion lists every bad file of a dataset at once)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem
