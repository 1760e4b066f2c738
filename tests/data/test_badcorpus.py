"""Every bad-input case gets exactly its expected outcome, and good samples beside bad ones stay ok.

These run the reader and validation in-process; tests/test_screening.py runs the same corpus through the
`poisonguard screen` command line.
"""

from __future__ import annotations

import time

import pytest

from poisonguard.data import DataError, read_dataset, validate
from tests.fixtures.badcorpus import make_bad_corpus, outcomes_table, screen_batches


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    started = time.perf_counter()
    cases = make_bad_corpus(out)
    return cases, time.perf_counter() - started, out


def test_corpus_is_broad_and_quick(corpus):
    cases, seconds, _ = corpus
    assert len(cases) >= 20 and len({c.name for c in cases}) == len(cases)
    assert {c.expect for c in cases} == {"error", "quarantine", "ok"}
    assert seconds < 2


def test_corpus_is_deterministic(corpus, tmp_path):
    _, _, first = corpus
    make_bad_corpus(tmp_path)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file() and not p.is_symlink())
    for rel in files:
        # Absolute-path cases embed their own folder; everything else must be identical.
        if "path_absolute" not in rel.parts:
            assert (tmp_path / rel).read_bytes() == (first / rel).read_bytes(), rel


def test_every_case_gets_its_expected_outcome(corpus):
    cases, _, _ = corpus
    for case in cases:
        if case.expect == "error":
            with pytest.raises(DataError) as err:
                read_dataset(case.path)
            for text in case.error_mentions:
                assert text in str(err.value), (case.name, str(err.value))
            continue
        verdicts = validate(read_dataset(case.path))
        quarantined = {sid: {r.code for r in reasons} for sid, reasons in verdicts.items() if reasons}
        assert quarantined == {sid: set(codes) for sid, codes in case.reasons.items()}, case.name
        assert case.ok_ids and case.ok_ids == set(verdicts) - set(quarantined), case.name


def test_every_case_has_a_description_and_a_table_row(corpus):
    cases, _, _ = corpus
    assert all(case.description for case in cases)
    table = outcomes_table(cases)
    assert all(f"| `{case.name}` |" in table for case in cases)
    assert "quarantined: `image_outside_root` ×2" in table and "exit 2, `error: train.json: invalid JSON" in table


def test_merged_screen_batches_keep_every_expected_outcome(corpus):
    """The merged files give, sample by sample, the outcomes their cases promise (prefixed ids and paths)."""
    cases, _, out = corpus
    batches = screen_batches(cases, out, min_usable=10)
    covered = [name for b in batches for name in b.cases]
    assert sorted(covered) == sorted(c.name for c in cases)  # every case in exactly one run
    merged = [b for b in batches if len(b.cases) > 1]
    assert len(merged) == 2 and len(batches) <= 12
    for batch in batches:
        if batch.expect == "error":
            with pytest.raises(DataError):
                read_dataset(batch.path, image_root=batch.image_folder)
            continue
        verdicts = validate(read_dataset(batch.path, image_root=batch.image_folder))
        quarantined = {sid: {r.code for r in reasons} for sid, reasons in verdicts.items() if reasons}
        assert quarantined == {sid: set(codes) for sid, codes in batch.reasons.items()}, batch.name
        assert batch.ok_ids == set(verdicts) - set(quarantined), batch.name
        assert len(batch.ok_ids) >= 10, batch.name  # enough for a screen to screen
