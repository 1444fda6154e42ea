"""Hugging Face datasets: a ``save_to_disk`` folder, ``.arrow`` files, or ``hf:NAME[:CONFIG]`` from the
hub, through the optional ``datasets`` library (``pip install 'ance-retriever[hf]'``).

A dataset dict's splits are the run's splits (``data.train_split``, ``data.eval_split``); a single
dataset is the training split. Rows hold Tevatron records or sentence-transformers pairs/triplets,
told apart by their columns. Local files are memory-mapped, never copied into a cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ance.run.errors import ConfigError, DataError

PREFIX = "hf:"
HINT = "reading Hugging Face datasets needs the `datasets` library: pip install 'ance-retriever[hf]'"
SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")


def is_hf_folder(root: Path) -> bool:
    """A ``save_to_disk`` folder (a dataset or a dataset dict), or a folder of ``.arrow`` files."""
    return root.is_dir() and (any((root / m).is_file() for m in SAVED_MARKERS) or any(root.glob("*.arrow")))


def _datasets() -> Any:
    try:
        import datasets  # optional extra; imported on use (heavy)
    except ImportError:
        raise ConfigError(HINT) from None
    datasets.disable_progress_bars()
    return datasets


def _load(spec: str) -> Any:
    ds = _datasets()
    if spec.startswith(PREFIX):
        name, _, config = spec[len(PREFIX):].partition(":")
        if not name:
            raise ConfigError(f"{spec}: expected hf:NAME or hf:NAME:CONFIG (a dataset on the Hugging Face hub)")
        try:
            return ds.load_dataset(name, config or None)
        except Exception as e:  # the hub, the network and the builders raise many kinds; reported as one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(spec, None, f"cannot load the Hugging Face dataset {name!r}"
                                        f"{f' (config {config!r})' if config else ''}: {first:.300}; offline "
                                        "(HF_HUB_OFFLINE=1) only datasets already in the cache load") from None
    root = Path(spec)
    try:
        if root.is_file():
            return ds.Dataset.from_file(str(root))
        if any((root / m).is_file() for m in SAVED_MARKERS):
            return ds.load_from_disk(str(root))
        files = sorted(root.glob("*.arrow"))
        return ds.concatenate_datasets([ds.Dataset.from_file(str(f)) for f in files])
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(root, None, f"not a readable Hugging Face dataset ({first:.300})") from None


class HFSplits:
    """The splits of one Hugging Face dataset, as rows ``(row, dict)`` with their column names."""

    def __init__(self, spec: str):
        self.spec = spec
        data = _load(spec)
        self.single = not hasattr(data, "keys")
        self.data = data

    def names(self) -> list[str]:
        return [] if self.single else list(self.data.keys())

    def split(self, name: str, first: bool) -> Any:
        """Split ``name``; a single dataset is the first (training) split whatever its name."""
        if self.single:
            if not first:
                raise DataError(self.spec, None, f"a single dataset holds one split, not {name!r}: give evaluation "
                                                 "data with data.eval_path=..., or set data.eval_split=null")
            return self.data
        if name not in self.data:
            raise DataError(self.spec, None, f"no split {name!r}; its splits: {', '.join(self.data.keys())} "
                                             "(set data.train_split / data.eval_split)")
        return self.data[name]

    def where(self, name: str) -> str:
        return self.spec if self.single else f"{self.spec}[{name}]"

    @staticmethod
    def columns(split: Any) -> list[str]:
        return list(split.column_names)

    @staticmethod
    def rows(split: Any) -> Iterator[tuple[int, dict]]:
        for i, row in enumerate(split, 1):
            yield i, row
