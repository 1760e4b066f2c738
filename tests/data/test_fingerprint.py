"""Sample fingerprints change with what the model sees (text, image bytes) and with nothing else."""

from __future__ import annotations

import json

from poisonguard.data import read_dataset
from poisonguard.data.fingerprint import sample_digest

from .helpers import llava, png, write_json


def _digests(path, root):
    ds = read_dataset(path, image_root=root)
    return {s.id: sample_digest(s, root) for s in ds.samples}


def test_digest_follows_text_and_image_bytes_not_formatting(tmp_path):
    png(tmp_path / "img.png")
    records = [llava("a"), llava("b", question="How many?"), llava("c", image="gone.png")]
    first = _digests(write_json(tmp_path / "t.json", records), tmp_path)
    assert len(set(first.values())) == 3

    # the same content, reformatted and with keys in another order: same digests
    reordered = [dict(reversed(list(r.items()))) for r in records]
    (tmp_path / "t2.json").write_text(json.dumps(reordered, indent=4))
    assert _digests(tmp_path / "t2.json", tmp_path) == first

    # an edited question, or an image replaced under the same name: that sample's digest changes
    edited = [llava("a"), llava("b", question="How many shapes?"), llava("c", image="gone.png")]
    after_edit = _digests(write_json(tmp_path / "t3.json", edited), tmp_path)
    assert after_edit["a"] == first["a"] and after_edit["b"] != first["b"]
    png(tmp_path / "img.png", color=(0, 0, 255))
    after_swap = _digests(tmp_path / "t.json", tmp_path)
    assert after_swap["a"] != first["a"] and after_swap["c"] == first["c"]
