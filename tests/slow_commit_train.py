"""`ance train` whose checkpoint commits each take DELAY seconds more, for the test that a trainer
waiting for fresher negatives first finishes (and announces) the commit in flight.

``python tests/slow_commit_train.py DELAY [ance train arguments]``
"""

from __future__ import annotations

import gc
import sys
import time

from ance import cli
from ance.trainer import checkpoint, loop


def main() -> int:
    delay, argv = float(sys.argv[1]), sys.argv[2:]

    class SlowCommits(checkpoint.CommitThread):
        def submit(self, staged):
            commit = staged.commit

            def slow_commit():
                time.sleep(delay)
                return commit()

            staged.commit = slow_commit
            return super().submit(staged)

    loop.CommitThread = SlowCommits  # the Trainer makes its CommitThread when `ance train` runs
    return cli.main(["train", *argv])


if __name__ == "__main__":
    code = main()
    gc.freeze()  # as ance.cli.entry: no last collection over torch's objects at exit
    sys.exit(code)
