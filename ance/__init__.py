"""ance: dense retriever training with asynchronous ANN negatives."""

__version__ = "0.1.0"
