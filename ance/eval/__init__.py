"""Evaluation: TREC run and qrels files, metrics through ir-measures, paired comparisons of runs.

May import: ance.run."""
