"""One progress line of a training run, for `ance train`'s console and `ance launch`'s progress: step/total,
smoothed loss, lr, speed, ETA, negatives version and gap, in at most 80 columns. Pure functions."""

from __future__ import annotations

import math


def eta_text(seconds: float | None) -> str:
    """``"1:02:03"``, ``"4:05"``, or ``"?"`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_line(step: int, total: int, loss: float | None, lr: float | None, rate: float | None,
                version: int | None = None, gap: int | None = None, bar: int = 0) -> str:
    """``step 120/200 60% loss 0.412 lr 1.2e-05 2.31it/s ETA 0:35 neg v100 gap 20``; ``bar`` > 0 puts a
    bar of that many cells in front (terminals). ``rate``: steps per second."""
    frac = step / total if total else 0.0
    parts = [f"step {step}/{total} {frac:.0%}" if total else f"step {step}"]
    if bar:
        done = min(bar, int(frac * bar))
        parts.insert(0, "[" + "#" * done + "." * (bar - done) + "]")
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    if lr is not None:
        parts.append(f"lr {lr:.1e}")
    if rate:
        parts.append(f"{rate:.2f}it/s" if rate >= 0.1 else f"{1 / rate:.0f}s/it")
        parts.append("ETA " + (eta_text((total - step) / rate) if total else "?"))
    if version is not None:
        parts.append(f"neg v{version} gap {gap}")
    return " ".join(parts)
