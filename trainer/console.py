"""`ance train`'s terminal progress: step/total, smoothed loss, lr, steps/s, ETA, negatives version and gap.

On a terminal one live line (a bar, redrawn at most 4 times a second); otherwise (a log file, a pipe,
the launcher's trainer log) a plain line every ``train.progress_every_s`` seconds, and at the last step.
Every line fits 80 columns. The line is :func:`ance.run.progressline.format_line`'s.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ance.run.progressline import format_line

TTY_INTERVAL_S = 0.25
WIDTH = 80


class Console:
    """``update(record)`` after every step (the trainer's step record); ``close()`` at the end."""

    def __init__(self, total: int, every_s: float, start_step: int = 0, out: TextIO | None = None,
                 tty: bool | None = None, clock=time.monotonic, smoothing: float = 0.1):
        self.total, self.every_s, self.start_step = total, every_s, start_step
        self.out = out or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.clock = clock
        self.alpha = smoothing
        self.loss: float | None = None
        self.t0 = clock()
        self._last = self.t0
        self._open = False

    def rate(self, step: int) -> float | None:
        """Steps per second since this process started training (waits included: what the ETA needs)."""
        done = step - self.start_step
        dt = self.clock() - self.t0
        return done / dt if done > 0 and dt > 0 else None

    def update(self, record: dict[str, Any]) -> None:
        loss = record.get("loss")
        if loss is not None and math.isfinite(loss):
            self.loss = loss if self.loss is None else (1 - self.alpha) * self.loss + self.alpha * loss
        step = int(record["step"])
        now = self.clock()
        last = step >= self.total
        if not last and now - self._last < (TTY_INTERVAL_S if self.tty else self.every_s):
            return
        self._last = now
        line = format_line(step, self.total, self.loss, record.get("lr"), self.rate(step),
                           record.get("negatives_version"), record.get("gap"), bar=0)
        if self.tty:
            room = WIDTH - 1 - len(line) - 3
            if room >= 10:
                line = format_line(step, self.total, self.loss, record.get("lr"), self.rate(step),
                                   record.get("negatives_version"), record.get("gap"), bar=min(room, 20))
            self.out.write("\r\033[K" + line[:WIDTH - 1])
            self._open = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self._open:
            self.out.write("\n")
            self.out.flush()
            self._open = False


def console_for(cfg, total: int, start_step: int, out: TextIO | None = None) -> Console | None:
    """The trainer's console progress, or None with ``train.progress_every_s: 0``."""
    every = cfg.train.progress_every_s
    if not every:
        return None
    return Console(total, every, start_step, out=out)
