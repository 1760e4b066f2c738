"""End to end on a very small world: `poisonguard screen` writes the report contract (one verdict row per
input sample, the release candidate, manifest, report.html), refuses
every kind of bad input cleanly, resumes after kill -9 to the same verdicts, and keeps one run per folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from poisonguard.cli import app
from poisonguard.data import read_dataset
from tests.fixtures.badcorpus import make_bad_corpus, screen_batches
from poisonguard.runlock import LOCK_FILE, folder_lock
from poisonguard.pipeline.validate import MIN_USABLE_SAMPLES

runner = CliRunner()
# a 2-layer model: TCAP's layer filter must fit it; the strata must fit a dozen samples
TINY_DETECTORS = ("profile_heads: {strata_k: 2}\nfit_gmm:\n  detectors: {span: {}, shift: {}, fused: {}, tcap_plus: {}, "
                  "tcap: {l_sens: 1, h_sens: 2}, projector: {}, bye: {}}\n")


def test_screen_writes_the_report_contract(tiny_world, tmp_path):
    out, _ = tiny_world
    data = json.loads((out / "train.json").read_text())
    # one sample that must be quarantined (image outside the folder), one text-only sample that must pass
    data.append({"id": "evil", "image": "../outside.png", "conversations": data[0]["conversations"]})
    data.append({"id": "textonly", "conversations": [{"from": "human", "value": "How many shapes are there?"},
                                                     {"from": "gpt", "value": "two"}]})
    (tmp_path / "mixed.json").write_text(json.dumps(data, indent=2))  # images stay in the shared world
    params = tmp_path / "params.yaml"  # a 2-layer model: TCAP's layer filter must fit it
    params.write_text(TINY_DETECTORS)
    r = runner.invoke(app, ["screen", "--data", str(tmp_path / "mixed.json"), "--image-folder", str(out),
                            "--base", str(out / "base_model"),
                            "--finetuned", str(out / "base_model"), "--out", str(tmp_path / "rep"), "--quiet",
                            "--params", str(params)])
    assert r.exit_code == 0, r.output
    rep = tmp_path / "rep"
    table = pd.read_parquet(rep / "verdicts.parquet")
    assert table["id"].tolist() == [d["id"] for d in data]  # every input id, input order, none missing
    assert table.set_index("id").loc["evil", "status"] == "quarantined"
    assert "image_outside_root" in table.set_index("id").loc["evil", "reason"]
    assert table.set_index("id").loc["textonly", "status"] == "ok"
    ok = table[table["status"] == "ok"]
    assert ok["p_poison"].between(0, 1).all()
    assert {"vote_tcap", "p_tcap", "flag_bye"} & set(table.columns)
    clean = read_dataset(rep / "clean.json", image_root=out)
    kept = set(clean.ids)
    assert "evil" not in kept and not (kept & set(table.loc[table["flagged"], "id"]))
    assert kept == set(ok.loc[~ok["flagged"], "id"])
    manifest = json.loads((rep / "manifest.json").read_text())
    assert manifest["input"]["n_samples"] == len(data) and manifest["counts"]["quarantined"] == 1
    page = (rep / "report.html").read_text()
    assert page.count("<img") >= 1
    # the default detector says why it flagged (or not): here the "fine-tuned" model is the base model itself
    assert "no shift: the fine-tuned and base decision states are identical" in page
    assert json.loads((rep / "detector.json").read_text())["default"]
    # the registered detector scores a drop from its extraction folder alone (drift scores stored beside it)
    from poisonguard.registry.scoring import load_report_detector, score_extractions

    name, det = load_report_detector(json.loads((rep / "detector.json").read_text()))
    scored = score_extractions(det, [str(rep / "extract")], strata_k=2)
    assert name == "span" and len(scored) == len(ok)  # the default detector (params.yaml, README)
    assert (rep / "extract" / "drift_scores.npz").is_file()


# ------------------------------------------------------------------ the real command line, in a subprocess
POISONGUARD = str(Path(sys.executable).with_name("poisonguard"))
SMALL_MODEL_PARAMS = ("extract_attention: {{batch_size: 8, shard_size: {shard}}}\nprofile_heads: {{strata_k: 2}}\n"
                      "fit_gmm:\n  detectors: {{span: {{}}, shift: {{}}, tcap: {{l_sens: 1, h_sens: 2}}}}\n")


def _screen_cmd(data, base, out, params, image_folder=None) -> list[str]:
    cmd = [POISONGUARD, "screen", "--data", str(data), "--base", str(base), "--finetuned", str(base),
           "--out", str(out), "--params", str(params), "--quiet"]
    return cmd + (["--image-folder", str(image_folder)] if image_folder else [])


def _env() -> dict:
    return {**os.environ, "PG_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env(), timeout=300)


def _codes(reason: str) -> set[str]:
    """The codes in a verdict's reason column ("code: sample 'id' ...; code: sample 'id' ...")."""
    return set(re.findall(r"(?:^|; )([a-z_]+): sample '", reason))


def test_every_bad_corpus_kind_through_the_screen_cli(tiny_world, tmp_path):
    """Each kind of bad input, through `poisonguard screen`: exit 2 naming the file and line, or a verdict
    table with every input id, each bad sample quarantined with exactly its codes and a reason that names it.
    Never a traceback. The kinds are merged into as few runs as their ids allow (each run loads a model), and
    the runs go two at a time (one thread each: the suite's machines have two cores)."""
    world, _ = tiny_world
    cases = make_bad_corpus(tmp_path / "corpus")
    batches = screen_batches(cases, tmp_path / "corpus", min_usable=MIN_USABLE_SAMPLES)
    assert sorted(n for b in batches for n in b.cases) == sorted(c.name for c in cases)
    params = tmp_path / "params.yaml"  # input handling is under test, not detection: one detector, no plots
    params.write_text("extract_attention: {batch_size: 8}\nprofile_heads: {strata_k: 2}\naudit_projector: {enabled: false}\n"
                      "fit_gmm: {detectors: {tcap_plus: {}}}\nem_vote: {decide: tcap_plus, annotators: [tcap_plus]}\n")
    outs = [tmp_path / "reports" / b.name for b in batches]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda b, out: _run(_screen_cmd(b.path, world / "base_model", out, params,
                                                                b.image_folder)), batches, outs))
    for batch, out, r in zip(batches, outs, results, strict=True):
        assert "Traceback" not in r.stderr, (batch.name, r.stderr)
        if batch.expect == "error":
            assert r.returncode == 2, (batch.name, r.stderr)
            message = r.stderr.strip()
            assert message.startswith("error: ") and len(message.splitlines()) == 1, message
            assert all(text in message for text in batch.error_mentions), (batch.name, message)
            assert not (out / "verdicts.parquet").exists()
            continue
        assert r.returncode == 0, (batch.name, r.stderr)
        table = pd.read_parquet(out / "verdicts.parquet").set_index("id")
        assert list(table.index) == read_dataset(batch.path, image_root=batch.image_folder).ids
        assert set(table.index) == set(batch.reasons) | batch.ok_ids, batch.name  # every input id, none other
        for sid, codes in batch.reasons.items():
            row = table.loc[sid]
            assert row["status"] == "quarantined" and _codes(row["reason"]) == codes, (sid, row["reason"])
            assert f"sample {sid!r}" in row["reason"], row["reason"]  # readable: names the sample
            assert "field '" in row["reason"] or "not_an_object" in row["reason"], row["reason"]  # and the field
        ok = table.loc[sorted(batch.ok_ids)]
        assert (ok["status"] == "ok").all() and ok["p_poison"].between(0, 1).all(), batch.name
        released = read_dataset(out / ("clean" + batch.path.suffix), image_root=batch.image_folder).ids
        assert not set(released) & set(batch.reasons)  # a quarantined sample is never in the release candidate


def test_a_file_with_no_usable_sample_exits_2_with_every_id_in_the_table(tiny_world, tmp_path):
    world, _ = tiny_world
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"id": "a", "image": "../x.png", "conversations": []}, "junk"]))
    params = tmp_path / "params.yaml"
    params.write_text(SMALL_MODEL_PARAMS.format(shard=1024))
    r = _run(_screen_cmd(data, world / "base_model", tmp_path / "rep", params))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "no usable sample: all 2 samples are quarantined" in r.stderr
    table = pd.read_parquet(tmp_path / "rep" / "verdicts.parquet")
    assert table["id"].tolist() == ["a", "__index_1"] and (table["status"] == "quarantined").all()


def test_a_second_screen_on_a_held_output_folder_is_refused(tiny_world, tmp_path):
    """The output folder's lock: while one run holds it, another screen there stops at once (exit 2, naming
    the holder) and writes nothing."""
    world, _ = tiny_world
    params = tmp_path / "params.yaml"
    params.write_text(SMALL_MODEL_PARAMS.format(shard=1024))
    out = tmp_path / "rep"
    with folder_lock(out):
        r = _run(_screen_cmd(world / "train.json", world / "base_model", out, params))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"in use by another poisonguard run (pid {os.getpid()}" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def _shard_state(extract_dir: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(extract_dir)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(extract_dir.glob("*/shard_*.npz"))}


def test_screen_killed_during_extraction_resumes_to_the_same_verdicts(tiny_world, tmp_path):
    """kill -9 once a shard is finished; the rerun skips finished shards (same bytes, same mtime, and says
    so), completes, and its verdict table equals an uninterrupted run's. The killed run's folder lock does
    not outlive it: the rerun starts at once."""
    world, _ = tiny_world
    records = json.loads((world / "train.json").read_text())
    data = [{**records[i % len(records)], "id": f"r{i:03d}"} for i in range(160)]
    (tmp_path / "train.json").write_text(json.dumps(data))
    params = tmp_path / "params.yaml"
    params.write_text(SMALL_MODEL_PARAMS.format(shard=8))  # 20 shards per model

    def cmd(out):
        return _screen_cmd(tmp_path / "train.json", world / "base_model", out, params, image_folder=world)

    out = tmp_path / "rep"
    first_shard = out / "extract" / "finetuned" / "shard_00000.npz"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 120
        while not first_shard.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    done = _shard_state(out / "extract")
    assert first_shard.exists() and 1 <= len(done) < 40, len(done)  # interrupted mid-extraction
    assert not (out / "verdicts.parquet").exists()

    r = _run(cmd(out))  # the rerun: the killed run's lock is gone with it
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    finetuned_done = sum(k.startswith("finetuned/") for k in done)
    assert f"resuming; {finetuned_done} of 20 shards already finished, skipped" in r.stderr
    after = _shard_state(out / "extract")
    assert len(after) == 40 and all(after[k] == v for k, v in done.items())  # finished shards untouched
    assert not list((out / "extract").glob("*/.*.tmp"))  # the killed writer's temp file is cleaned up

    reference = _run(cmd(tmp_path / "uninterrupted"))
    assert reference.returncode == 0, reference.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(out / "verdicts.parquet"),
                                  pd.read_parquet(tmp_path / "uninterrupted" / "verdicts.parquet"))
