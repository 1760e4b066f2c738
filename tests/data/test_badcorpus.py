"""Every bad-input case gets exactly its expected outcome, and good samples beside bad ones stay ok."""

from __future__ import annotations

import time

import pytest

from poisonguard.data import DataError, read_dataset, validate
from poisonguard.data.badcorpus import make_bad_corpus


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
        verdicts = validate(read_dataset(case.path), case.limits)
        quarantined = {sid: {r.code for r in reasons} for sid, reasons in verdicts.items() if reasons}
        assert quarantined == {sid: set(codes) for sid, codes in case.reasons.items()}, case.name
        assert case.ok_ids and case.ok_ids == set(verdicts) - set(quarantined), case.name
