"""What a scan tells stderr: text for people, or (``--log-format json``) one JSON object a line for log shippers.

JSON lines carry ``ts`` (UTC, ISO 8601), ``level``, ``event`` (``progress``, ``summary``, ``error``) and the
event's fields: the run id, its status and counts in ``summary``, the message in ``progress`` and ``error``.
Text mode keeps what a terminal shows: a progress line on a terminal only, errors as ``error: …``.
Every storage name is hostile: text mode escapes control characters (a newline never makes two lines); JSON
escapes them by itself.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from regindex.output import printable as _printable

LOG_FORMATS = ("text", "json")


class ScanLog:
    def __init__(self, fmt: str = "text", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self.run_id: int | None = None
        self._progress_shown = False
        self.live = fmt == "text" and self.stream.isatty()

    def _json(self, level: str, event: str, **fields: Any) -> None:
        rec = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "level": level,
               "event": event, "run": self.run_id, **fields}
        self.stream.write(json.dumps(rec, default=str, ensure_ascii=True) + "\n")
        self.stream.flush()

    def progress(self, message: str) -> None:
        if message.startswith("run ") and message.endswith(" started"):
            try:
                self.run_id = int(message.split()[1])
            except ValueError:
                pass
        if self.fmt == "json":
            self._json("info", "progress", message=message)
        elif self.live:
            self.stream.write(f"\r\033[K{_printable(message)[:100]}")
            self.stream.flush()
            self._progress_shown = True

    def end_progress(self) -> None:
        if self._progress_shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._progress_shown = False

    def error(self, message: str) -> None:
        self.end_progress()
        if self.fmt == "json":
            self._json("error", "error", message=message)
        else:
            self.stream.write(f"error: {_printable(message)}\n")
            self.stream.flush()

    def summary(self, **fields: Any) -> None:
        if self.fmt == "json":
            self._json("info", "summary", **fields)
