"""Hard negatives: the selection from ranked lists (select, its per-block kernel) and the negatives
files the broker persists and `ance mine` writes.

May import: ance.run."""
