"""`poisonguard poison`: poison a dataset file and write it, with its images, in the input's own format."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from poisonguard.attacks.poisoning import PoisonResult, poison
from poisonguard.data.dataset import read_dataset
from poisonguard.data.images import resolve_image_path
from poisonguard.data.loading import image_loader
from poisonguard.data.writer import atomic_write_bytes, write_dataset


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def poison_file(data: str | Path, out: str | Path, attack: str, rate: float, *, target: str | None = None,
                seed: int = 0, relabel: bool = True, params=None, image_folder: str | Path | None = None
                ) -> PoisonResult:
    """Write OUT/<data name> (same format), OUT/images (clean ones linked, triggered ones new) and
    OUT/poison_ids.json (the ground truth; no detector reads it)."""
    out = Path(out)
    ds = read_dataset(data, image_root=image_folder)
    result = poison(ds.samples, attack, rate, target=target, seed=seed, relabel=relabel, params=params,
                    load_image=image_loader(ds.image_root, cache_size=4096))
    out.mkdir(parents=True, exist_ok=True)
    new_refs = set(result.images)
    for s in result.samples:
        for ref in s.images:
            if ref not in new_refs:
                _link_or_copy(resolve_image_path(ref, ds.image_root), out / ref)
    for ref, img in result.images.items():
        (out / ref).parent.mkdir(parents=True, exist_ok=True)
        img.save(out / ref, format="PNG")
    write_dataset(replace(ds, samples=result.samples, image_root=out), out / Path(data).name)
    truth = {"attack": attack, "rate": rate, "target": result.target, "seed": seed, "relabel": relabel,
             "n_samples": len(result.samples), "poison_ids": result.poison_ids}
    atomic_write_bytes(out / "poison_ids.json", (json.dumps(truth, indent=2) + "\n").encode())
    return result


def read_poison_ids(path: str | Path) -> list[str]:
    """The poisoned sample ids of a `poison_ids.json` (ground truth: benchmark and evaluation tooling only)."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: a ground-truth file written by `poisonguard poison`") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    ids = obj.get("poison_ids") if isinstance(obj, dict) else obj
    if not isinstance(ids, list):
        raise ValueError(f"{path} must hold a list of ids (or an object with `poison_ids`)")
    return [str(i) for i in ids]
