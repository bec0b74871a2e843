"""JSON bodies for the errors waitress answers itself, before the app sees the request.

Waitress refuses a request whose body is over ``max_request_body_size`` (413), a malformed one
(400) or one with too large headers (431) with a ``text/plain`` page of its own. The API
promises JSON for every error a client can get, so the server's channels use an error task that
writes ``{"error": "..."}`` instead, with the message the app would give for the same status.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

MessageFor = Callable[[int, str], str]  # (status, waitress' reason and detail) -> message


def json_error_channels(server: Any, message_for: MessageFor) -> None:
    """Make every listening socket of a waitress ``server`` answer its own errors as JSON."""

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            error = self.request.error
            detail = f"{error.reason}: {error.body}" if error.body else error.reason
            body = json.dumps({"error": message_for(error.code, detail)}).encode("utf-8")
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    # create_server returns one server, or a MultiSocketServer over several (host names that
    # resolve to more than one address); each accepts into channel_class.
    listeners = [server, *getattr(server, "map", {}).values()]
    for listener in listeners:
        if hasattr(listener, "channel_class"):
            listener.channel_class = JsonErrorChannel
