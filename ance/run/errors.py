"""Error types shared by every role.

Each error says what was wrong, where (file:line, message type, peer) and what
to do, so a user can act on the first line of the traceback.
"""

from __future__ import annotations

from pathlib import Path


class AnceError(Exception):
    """Base class of every error ance raises on purpose."""


class ConfigError(AnceError):
    """A config file or override is invalid."""


class DataError(AnceError):
    """An input file is malformed.

    ``str(err)`` reads ``path:line: reason`` (``path: reason`` when no line
    applies), the form editors and terminals turn into links.
    """

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class ProtocolError(AnceError):
    """A wire message could not be accepted (see ``ance.wire.protocol``)."""


class CheckpointError(AnceError):
    """A checkpoint directory is missing, incomplete or unreadable."""


class TrainingError(AnceError):
    """Training cannot go on (a non-finite loss or gradient): the step and value are named."""


class DiskFullError(AnceError):
    """A write found no space left (ENOSPC, or a disk quota): the file and what was being written are named."""

    def __init__(self, path: str | Path, what: str):
        self.path = str(path)
        super().__init__(f"{path}: disk full while writing {what}; free space on its file system "
                         "(what was written before is intact), then resume")
