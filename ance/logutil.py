"""One logging format for every process: time, role, pid, level, logger, message."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "INFO", role: str = "ance") -> None:
    fmt = f"%(asctime)s {role}[{os.getpid()}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO), format=fmt,
                        stream=sys.stderr, force=True)
