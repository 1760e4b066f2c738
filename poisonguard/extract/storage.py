"""Sharded, resumable, atomic storage of an extraction.

Why: extraction is the long step of a screen (one forward per sample through a fine-tuned MLLM) and fans out
over workers (a Dask/Prefect task per shard). Each shard is written to a temporary file and `os.replace`d, so
a killed run leaves either a whole shard or none; a rerun skips finished shards and resumes to the same
result. `manifest.json` fixes the plan (ids, shard size, backend) so that shards of a different plan are never
mixed in: a mismatch raises instead of silently overwriting.

Layout: out_dir/manifest.json, out_dir/shard_00000.npz, ... Each shard holds the arrays of `Extraction`
for ids[k*shard_size:(k+1)*shard_size], its ids, and its meta as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from poisonguard.extract.extraction import BACKENDS, Extraction, extract
from poisonguard.train.batching import Example

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
ARRAYS = ("alloc", "vis_entropy", "hidden", "n_tokens")


def shard_path(out_dir: str | Path, shard: int) -> Path:
    return Path(out_dir) / f"shard_{shard:05d}.npz"


def n_shards(n: int, shard_size: int) -> int:
    return (n + shard_size - 1) // shard_size


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Call write(file) on a temp file in path's folder, fsync, then rename over path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_manifest(out_dir: str | Path, ids: Sequence[str], *, shard_size: int, backend: str,
                    tag: str = "") -> dict:
    """Write the manifest, or check that the existing one describes the same plan; returns it.

    `tag` is a free-form identity of the model (e.g. its path and weight hash): shards are only reused for
    the same tag, because nothing else in the plan tells two models apart.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"version": MANIFEST_VERSION, "n": len(ids), "shard_size": shard_size,
            "n_shards": n_shards(len(ids), shard_size), "backend": backend, "tag": tag,
            "ids_sha256": _ids_digest(ids)}
    path = out / MANIFEST
    if path.exists():
        existing = json.loads(path.read_text())
        if existing != plan:
            raise ValueError(f"{path} describes a different extraction ({existing}); use a fresh out_dir")
        return existing
    _atomic_write(path, lambda f: f.write(json.dumps(plan, indent=2).encode()))
    return plan


def _shard_ids(path: Path) -> list[str]:
    with np.load(path, allow_pickle=False) as z:
        return [str(i) for i in z["ids"]]


def extract_shard(model, processor, examples: Sequence[Example], ids: Sequence[str], out_dir: str | Path,
                  shard: int, *, shard_size: int, batch_size: int = 16, backend: str = "capture",
                  tag: str = "", show_progress: bool = False) -> Path:
    """Extract shard `shard` (samples [shard*shard_size, (shard+1)*shard_size)) unless already done.

    Standalone so that one Dask/Prefect task can run one shard; `examples` and `ids` are the whole dataset.
    """
    if len(examples) != len(ids):
        raise ValueError(f"{len(examples)} examples but {len(ids)} ids")
    plan = ensure_manifest(out_dir, ids, shard_size=shard_size, backend=backend, tag=tag)
    if not 0 <= shard < plan["n_shards"]:
        raise IndexError(f"shard {shard} out of range 0..{plan['n_shards'] - 1}")
    lo, hi = shard * shard_size, min((shard + 1) * shard_size, len(ids))
    want = [str(i) for i in ids[lo:hi]]
    path = shard_path(out_dir, shard)
    if path.exists():
        if _shard_ids(path) != want:
            raise ValueError(f"{path} holds other ids than shard {shard} of the manifest")
        return path
    ext = extract(model, processor, examples[lo:hi], batch_size=batch_size, backend=backend,
                  show_progress=show_progress)
    arrays = {name: getattr(ext, name) for name in ARRAYS}
    _atomic_write(path, lambda f: np.savez(f, ids=np.array(want, dtype=str),
                                           meta=np.array(json.dumps(ext.meta, sort_keys=True)), **arrays))
    return path


def extract_to_dir(model, processor, examples: Sequence[Example], ids: Sequence[str], out_dir: str | Path, *,
                   shard_size: int = 256, batch_size: int = 16, backend: str = "capture", tag: str = "",
                   show_progress: bool = True) -> Extraction:
    """Extract every missing shard of `out_dir`, then load the whole extraction."""
    from tqdm.auto import tqdm

    plan = ensure_manifest(out_dir, ids, shard_size=shard_size, backend=backend, tag=tag)
    for shard in tqdm(range(plan["n_shards"]), desc="shards", disable=not show_progress):
        extract_shard(model, processor, examples, ids, out_dir, shard, shard_size=shard_size,
                      batch_size=batch_size, backend=backend, tag=tag, show_progress=show_progress)
    return load_extraction(out_dir, ids=ids)


def load_extraction(out_dir: str | Path, *, ids: Sequence[str] | None = None) -> Extraction:
    """Concatenate the shards in order; checks every shard is present, metas agree, and the ids match."""
    out = Path(out_dir)
    plan = json.loads((out / MANIFEST).read_text())
    parts: list[Extraction] = []
    for shard in range(plan["n_shards"]):
        path = shard_path(out, shard)
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: the extraction is unfinished (rerun to resume)")
        with np.load(path, allow_pickle=False) as z:
            parts.append(Extraction(**{name: z[name] for name in ARRAYS}, meta=json.loads(str(z["meta"])),
                                    ids=[str(i) for i in z["ids"]]))
    if not parts:
        raise ValueError(f"{out} holds an empty extraction")
    if any(p.meta != parts[0].meta for p in parts):
        raise ValueError(f"shards of {out} were extracted with different settings (meta differs)")
    ext = Extraction.concat(parts)
    if _ids_digest(ext.ids) != plan["ids_sha256"] or len(ext.ids) != plan["n"]:
        raise ValueError(f"the shards' ids in {out} do not match its manifest")
    if ids is not None and ext.ids != [str(i) for i in ids]:
        raise ValueError(f"the ids in {out} differ from the ids asked for")
    return ext
