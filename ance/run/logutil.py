"""One logging format for every process: time, role, pid, level, logger, message."""

from __future__ import annotations

import logging
import os
import sys


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted, not the stream it was
    made with: a command run in-process (tests, notebooks) after another one had stderr replaced and
    closed would otherwise log "I/O operation on closed file"."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: str = "INFO", role: str = "ance") -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s {role}[{os.getpid()}] %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO), handlers=[handler], force=True)
