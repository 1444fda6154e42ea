"""`ance train` that freezes while writing one checkpoint, for the kill -9 tests.

``python tests/paused_train.py STEP FLAG [ance train arguments]``: runs ``ance
train`` with a ``Trainer`` whose model save, at checkpoint STEP only, writes the
checkpoint's temp dir into FLAG and sleeps. ``write_checkpoint`` saves the
trainer state, then the model, then (after fsync) the manifest, so the test can
``kill -9`` the process exactly where a crash hurts most.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ance import cli
from ance.trainer import loop


def main() -> int:
    pause_step, flag, argv = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]

    class PausingTrainer(loop.Trainer):
        def save_checkpoint(self):
            if self.step == pause_step:
                save = self.model.save

                def save_then_pause(path):
                    save(path)
                    flag.write_text(str(path))
                    time.sleep(3600)

                self.model.save = save_then_pause
            return super().save_checkpoint()

    loop.Trainer = PausingTrainer  # `ance train` imports the Trainer when it runs
    return cli.main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
