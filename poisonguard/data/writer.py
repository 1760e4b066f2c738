"""Writing a dataset back in its input's own format, atomically.

The release is rendered from `Sample.raw` (the records exactly as parsed, in input order and key order) in the
input's `JsonStyle`, so it differs from the input only by the samples left out. The file appears complete
or not at all: a crash mid-write never leaves a half release where the approver or a later stage could pick
it up.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from poisonguard.atomic import atomic_write_bytes
from poisonguard.data.dataset import Dataset


def write_dataset(dataset: Dataset, out_path: str | Path, keep_ids: Iterable[str] | None = None) -> Path:
    """Write the samples whose id is in `keep_ids` (all when None) to `out_path`; return the path.

    Raises `ValueError` for ids in `keep_ids` that the dataset does not have: a verdict table and a dataset
    that do not match must not produce a release silently.
    """
    if keep_ids is None:
        kept = dataset.samples
    else:
        wanted = set(keep_ids)
        unknown = wanted.difference(dataset.ids)
        if unknown:
            shown = ", ".join(repr(i) for i in sorted(unknown)[:5])
            raise ValueError(f"{len(unknown)} id(s) to keep are not in {dataset.path}: {shown}")
        kept = [s for s in dataset.samples if s.id in wanted]
    text = dataset.style.render([s.raw for s in kept])
    return atomic_write_bytes(Path(out_path), text.encode("utf-8"))
