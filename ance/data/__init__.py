"""Training and evaluation data: the dataset (corpus, splits, qrels, subsetting), the file readers of
every layout, BEIR downloads, BM25 warm-up rankings.

May import: ance.run."""
