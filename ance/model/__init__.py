"""The bi-encoder and its inputs: the model (pooling, towers, save/load, named models), the
sentence-transformers files of a model dir, the tokenized-corpus cache, encoding.

May import: ance.run, ance.data."""
