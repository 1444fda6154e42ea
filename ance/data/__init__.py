"""Training and evaluation data: the dataset (corpus, splits, qrels, subsetting), the file readers of
every layout (BEIR, MS MARCO, and the record formats: Tevatron, sentence-transformers pairs/triplets,
Hugging Face datasets), `ance data inspect`, BEIR downloads, BM25 warm-up rankings.

May import: ance.run."""
