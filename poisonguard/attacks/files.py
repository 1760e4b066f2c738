"""`poisonguard poison`: poison a dataset file and write it, with its images, in the input's own format; and
`read_poison_ids`, the one reader of the ground truth it writes beside them (poison_ids.json)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from poisonguard.attacks.poisoning import PoisonResult, poison
from poisonguard.attacks.registry import get_attack
from poisonguard.data.dataset import read_dataset
from poisonguard.data.errors import DataError, json_type
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
    OUT/poison_ids.json (the ground truth, with per-sample targets for attacks of several arms; no detector
    reads it)."""
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
    if get_attack(attack).arms is not None:
        # Several triggers or clean trigger samples: each poisoned id's own target and each triggered id's arm
        # (ASR and fit per trigger), and the clean trigger samples. Single-trigger attacks keep the file as it
        # always was.
        truth.update(targets=result.targets, arms=result.arm_of, clean_trigger_ids=result.clean_trigger_ids)
    atomic_write_bytes(out / "poison_ids.json", (json.dumps(truth, indent=2) + "\n").encode())
    return result


def read_poison_ids(path: str | Path) -> list[str]:
    """The poisoned sample ids, in file order, from a poison_ids.json: the object `poison_file` writes (ids
    under "poison_ids") or a bare JSON list of ids. Raises DataError naming the file when it is missing,
    is not JSON, or holds anything else."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the poisoned ids: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a poison_ids.json: invalid JSON ({exc})") from None
    ids = obj.get("poison_ids") if isinstance(obj, dict) else obj
    if not isinstance(ids, list):
        where = "its 'poison_ids' is " + json_type(ids) if isinstance(obj, dict) else "it holds " + json_type(obj)
        raise DataError(f"{path}: not a poison_ids.json: {where}; expected a list of sample ids")
    bad = next((k for k, i in enumerate(ids) if isinstance(i, bool) or not isinstance(i, str | int)), None)
    if bad is not None:
        raise DataError(f"{path}: not a poison_ids.json: id {bad} is {json_type(ids[bad])}, not a string")
    return [str(i) for i in ids]
