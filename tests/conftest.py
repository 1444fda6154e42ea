"""One torch (OpenMP) thread for the tests and every process they start, unless OMP_NUM_THREADS is set.

The tests' models are tiny: a second thread buys them nothing, and on a busy machine (CI's two cores
with the Docker and chaos tests beside the rest, or a benchmark running alongside) OpenMP's threads
spin at every operator's barrier waiting for one that is descheduled. Measured on 2 busy cores:
benchmarks/profile_train.py of the tiny BERT at batch 4, 6,014 ms a step with two threads, 93 ms
with one. It is set here, before any test module imports torch, and children inherit it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
