"""Library exceptions.

Small and specific; the CLI and the flows turn them into one-line messages. Each carries
enough context (file, field, value) to act on without a traceback.
"""

from __future__ import annotations


class MqepiError(Exception):
    """Base class of every error mqepi raises on purpose."""


class EventValidationError(MqepiError):
    """A batch of events failed its schema. Terminal: retrying cannot fix it.

    ``failures`` holds one dict per failing check (column, check, first failing values).
    """

    def __init__(self, event_type: str, failures: list[dict], source: str | None = None):
        self.event_type = event_type
        self.failures = failures
        self.source = source
        first = failures[0] if failures else {}
        where = f" in {source}" if source else ""
        more = f" (+{len(failures) - 1} more failing checks)" if len(failures) > 1 else ""
        subject = f"column {first['column']!r}" if first.get("column") else "row check"
        super().__init__(
            f"invalid {event_type} events{where}: {subject} failed "
            f"{first.get('check')}: first failing values {first.get('values')}{more}"
        )


class LakeError(MqepiError):
    """The lake could not be read or written. A failed write fails the run."""


class QueryError(MqepiError):
    """A SQL query over the lake failed."""
