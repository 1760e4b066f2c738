"""Sharded, resumable, atomic storage of an extraction.

Why: extraction is the long step of a screen (one forward per sample through a fine-tuned MLLM) and fans out
over workers (a Dask/Prefect task per shard). Each shard is written to a temporary file and `os.replace`d, so
a killed run leaves either a whole shard or none; a rerun skips finished shards and resumes to the same
result.

Layout: out_dir/manifest.json, out_dir/shard_00000.npz, ... Each shard holds the arrays of `Extraction`
for ids[k*shard_size:(k+1)*shard_size], its ids, its meta as JSON, and its fingerprint.

Stale shards. `manifest.json` fixes the plan: the ids, the shard size, the backend, the model (`tag`) and,
when the caller passes them, one content digest per sample (`inputs`, see poisonguard.data.fingerprint).
Every shard stores `shard_fingerprint(plan, k)`, so a shard is reused only for the very plan and position it
was computed for -- never for an edited sample, a replaced image, another model or another split -- and
`load_extraction` refuses a shard that does not belong to its manifest. A folder holding another plan raises
by default (`on_stale="raise"`: a library caller pointed at the wrong folder); `poisonguard screen` passes
`on_stale="restart"`, which discards the old shards and says so in its log.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from poisonguard.extract.extraction import BACKENDS, Extraction, extract
from poisonguard.train.batching import Example

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: content digests of the inputs, a fingerprint in every shard
ARRAYS = ("alloc", "vis_entropy", "hidden", "n_tokens")
Log = Callable[[str], None]


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


def make_plan(ids: Sequence[str], *, shard_size: int, backend: str, tag: str = "",
              inputs: Sequence[str] | None = None) -> dict:
    """What an extraction folder holds; two runs may share shards only if their plans are equal."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if inputs is not None and len(inputs) != len(ids):
        raise ValueError(f"{len(inputs)} input digests for {len(ids)} ids")
    return {"version": MANIFEST_VERSION, "n": len(ids), "shard_size": shard_size,
            "n_shards": n_shards(len(ids), shard_size), "backend": backend, "tag": tag,
            "ids_sha256": _ids_digest(ids), "inputs_sha256": None if inputs is None else _ids_digest(inputs)}


def shard_fingerprint(plan: dict, shard: int) -> str:
    """Identity of shard `shard` of `plan`: equal only for the same plan and the same position."""
    return hashlib.sha256(json.dumps({"plan": plan, "shard": shard}, sort_keys=True).encode()).hexdigest()


def ensure_manifest(out_dir: str | Path, ids: Sequence[str], *, shard_size: int, backend: str,
                    tag: str = "", inputs: Sequence[str] | None = None,
                    on_stale: Literal["raise", "restart"] = "raise", log: Log | None = None) -> dict:
    """Write the manifest, or check that the existing one describes the same plan; returns the plan.

    `tag` is a free-form identity of the model (e.g. a digest of its weight files): nothing else in the plan
    tells two models apart. `inputs` are per-sample content digests aligned with `ids`. With
    `on_stale="restart"` a folder holding another plan is emptied of its shards instead of refused.
    """
    plan = make_plan(ids, shard_size=shard_size, backend=backend, tag=tag, inputs=inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    if path.exists():
        existing = json.loads(path.read_text())
        if existing == plan:
            return plan
        if on_stale != "restart":
            raise ValueError(f"{path} describes a different extraction ({existing}); use a fresh out_dir")
        stale = sorted(out.glob("shard_*.npz"))
        for p in stale:
            p.unlink()
        remove_temp_files(out)
        if log:
            log(f"{out}: the inputs, the model or the plan changed since the last run; "
                f"discarded {len(stale)} stale shard(s)")
    _atomic_write(path, lambda f: f.write(json.dumps(plan, indent=2).encode()))
    return plan


def remove_temp_files(out_dir: str | Path) -> int:
    """Delete temp files that a killed writer left behind; only safe while no one else writes here."""
    stray = list(Path(out_dir).glob(".*.tmp"))
    for p in stray:
        p.unlink(missing_ok=True)
    return len(stray)


def _stored_fingerprint(path: Path) -> str | None:
    """The fingerprint a shard file carries; None if it is missing, unreadable or from an older version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z["fingerprint"]) if "fingerprint" in z.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def shard_done(out_dir: str | Path, plan: dict, shard: int) -> bool:
    """Whether shard `shard` of `plan` is on disk, complete, and computed for exactly this plan."""
    return _stored_fingerprint(shard_path(out_dir, shard)) == shard_fingerprint(plan, shard)


class _Window(Sequence):
    """examples[lo:hi] without building it: a lazy sequence stays lazy, so each example (and its image) is
    made where it is used -- in a worker thread when extraction has workers."""

    def __init__(self, examples: Sequence[Example], lo: int, hi: int):
        self.examples, self.lo, self.hi = examples, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.examples[self.lo + i]


def extract_shard(model, processor, examples: Sequence[Example], ids: Sequence[str], out_dir: str | Path,
                  shard: int, *, shard_size: int, batch_size: int = 16, max_batch_tokens: int | None = None,
                  num_workers: int = 0, backend: str = "capture", tag: str = "",
                  inputs: Sequence[str] | None = None, show_progress: bool = False, log: Log | None = None) -> Path:
    """Extract shard `shard` (samples [shard*shard_size, (shard+1)*shard_size)) unless already done.

    Standalone so that one Dask/Prefect task can run one shard; `examples` and `ids` are the whole dataset
    (`examples` may be a lazy sequence: only the shard's examples are built, one at a time). Batching
    (`batch_size`, `max_batch_tokens`) and `num_workers` are those of `extraction.extract`; they are not part
    of the plan, since they change how the work is cut, not the samples or the model. A shard file left by
    another plan is recomputed and replaced, never reused.
    """
    if len(examples) != len(ids):
        raise ValueError(f"{len(examples)} examples but {len(ids)} ids")
    plan = ensure_manifest(out_dir, ids, shard_size=shard_size, backend=backend, tag=tag, inputs=inputs)
    if not 0 <= shard < plan["n_shards"]:
        raise IndexError(f"shard {shard} out of range 0..{plan['n_shards'] - 1}")
    path = shard_path(out_dir, shard)
    if shard_done(out_dir, plan, shard):
        return path
    if path.exists() and log:
        log(f"{path}: stale or unreadable (not computed for this plan); recomputing")
    lo, hi = shard * shard_size, min((shard + 1) * shard_size, len(ids))
    want = [str(i) for i in ids[lo:hi]]
    ext = extract(model, processor, _Window(examples, lo, hi), batch_size=batch_size, backend=backend,
                  max_batch_tokens=max_batch_tokens, num_workers=num_workers, show_progress=show_progress)
    arrays = {name: getattr(ext, name) for name in ARRAYS}
    fingerprint = shard_fingerprint(plan, shard)
    _atomic_write(path, lambda f: np.savez(f, ids=np.array(want, dtype=str), fingerprint=np.array(fingerprint),
                                           meta=np.array(json.dumps(ext.meta, sort_keys=True)), **arrays))
    return path


def extract_to_dir(model, processor, examples: Sequence[Example], ids: Sequence[str], out_dir: str | Path, *,
                   shard_size: int = 256, batch_size: int = 16, max_batch_tokens: int | None = None,
                   num_workers: int = 0, backend: str = "capture", tag: str = "",
                   inputs: Sequence[str] | None = None, on_stale: Literal["raise", "restart"] = "raise",
                   show_progress: bool = True, log: Log | None = None) -> Extraction:
    """Extract every missing shard of `out_dir` (finished ones are skipped and logged), then load it all."""
    from tqdm.auto import tqdm

    plan = ensure_manifest(out_dir, ids, shard_size=shard_size, backend=backend, tag=tag, inputs=inputs,
                           on_stale=on_stale, log=log)
    todo = [k for k in range(plan["n_shards"]) if not shard_done(out_dir, plan, k)]
    if log and len(todo) < plan["n_shards"]:
        log(f"{out_dir}: resuming; {plan['n_shards'] - len(todo)} of {plan['n_shards']} shards already "
            f"finished, skipped")
    for shard in tqdm(todo, desc="shards", disable=not show_progress):
        extract_shard(model, processor, examples, ids, out_dir, shard, shard_size=shard_size,
                      batch_size=batch_size, max_batch_tokens=max_batch_tokens, num_workers=num_workers,
                      backend=backend, tag=tag, inputs=inputs, show_progress=show_progress, log=log)
    return load_extraction(out_dir, ids=ids)


def load_extraction(out_dir: str | Path, *, ids: Sequence[str] | None = None) -> Extraction:
    """Concatenate the shards in order; checks every shard is present and belongs to the manifest, metas
    agree, and the ids match."""
    out = Path(out_dir)
    plan = json.loads((out / MANIFEST).read_text())
    parts: list[Extraction] = []
    for shard in range(plan["n_shards"]):
        path = shard_path(out, shard)
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: the extraction is unfinished (rerun to resume)")
        with np.load(path, allow_pickle=False) as z:
            if "fingerprint" not in z.files or str(z["fingerprint"]) != shard_fingerprint(plan, shard):
                raise ValueError(f"{path} was not computed for the plan in {out / MANIFEST} (stale); rerun")
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
