"""The terminal progress of `ance train` (trainer/console.py) and `ance launch` (launch/progress.py):
step/total, smoothed loss, lr, speed, ETA, negatives version and gap, in 80 columns, off a terminal."""

from __future__ import annotations

import io
import json

from ance.launch.progress import Progress
from ance.run.progressline import eta_text, format_line
from ance.trainer.console import Console


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_format_line_and_eta():
    line = format_line(120, 200, 0.41234, 1.2e-5, 2.0, 100, 20)
    assert line == "step 120/200 60% loss 0.412 lr 1.2e-05 2.00it/s ETA 0:40 neg v100 gap 20"
    assert format_line(3, 10, None, None, 0.05) == "step 3/10 30% 20s/it ETA 2:20"
    assert (eta_text(3725), eta_text(None), eta_text(float("inf"))) == ("1:02:05", "?", "?")


def test_train_console_off_a_terminal_prints_every_n_seconds():
    out, clock = io.StringIO(), Clock()
    console = Console(total=10, every_s=5.0, out=out, tty=False, clock=clock)
    for step in range(1, 11):
        clock.t += 1.0
        console.update({"step": step, "loss": 1.0, "lr": 1e-4, "negatives_version": 8, "gap": step % 4})
    console.close()
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["5/10", "10/10"]  # every 5 s, and the last step
    assert lines[-1] == "step 10/10 100% loss 1.000 lr 1.0e-04 1.00it/s ETA 0:00 neg v8 gap 2"
    assert "\r" not in out.getvalue()


def test_train_console_on_a_terminal_is_one_live_line_with_a_bar():
    out, clock = io.StringIO(), Clock()
    console = Console(total=4, every_s=30.0, out=out, tty=True, clock=clock)
    for step in range(1, 5):
        clock.t += 1.0
        console.update({"step": step, "loss": 2.0, "lr": 1e-4})
    console.close()
    frames = [f.removeprefix("\033[K") for f in out.getvalue().split("\r") if f]
    assert frames[-1].startswith("[####################] step 4/4 100% loss 2.000")
    assert all(len(f.rstrip("\n")) <= 79 for f in frames)


def test_launch_progress_off_a_terminal(tmp_path):
    events = [{"event": "step", "step": s, "total": 32, "loss": 0.5, "lr": 2e-5, "negatives_version": 8,
               "gap": s - 8, "time": 1000.0 + 2 * s} for s in (9, 10, 11)]
    events.append({"event": "refresh", "version": 8, "eval_ndcg@10": 0.7812})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    out = io.StringIO()
    progress = Progress(tmp_path, max_steps=24, max_gap=12, out=out)
    progress.tick()
    head, news = out.getvalue().splitlines()
    assert head == "step 11/32 34% loss 0.500 lr 2.0e-05 0.50it/s ETA 0:42 neg v8 gap 3"  # total from the log
    assert news == "  last v8 nDCG@10 0.781"
