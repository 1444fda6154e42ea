"""Run plumbing every other part imports: the config (dataclasses, YAML, overrides, checks), the run
directory's names, crash-safe file writes, errors, device and precision, telemetry, log format.

May import: nothing of ance (the bottom layer)."""
