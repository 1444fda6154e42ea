"""Nearest-neighbour search: index backends (faiss, torch), the pure top-k maths, and retrieve
(encode + index + search) behind `ance retrieve/encode/search/mine`.

May import: ance.run, ance.data, ance.model."""
