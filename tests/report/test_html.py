"""The approver's report on a small synthetic screen (real files, real validation, real detectors): the
decision comes first in plain words, the evidence names the planted target, the gallery embeds bounded
thumbnails, and the page renders without the dataset, with nothing flagged, and with the gate's result."""

from __future__ import annotations

import json
import re

import pytest

from poisonguard.report import evidence as ev
from poisonguard.report.html import Counts, _answer_note, decision_sentence, render_report, screen_summary
from tests.fixtures.synthetic_screen import make_screen


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    return make_screen(tmp_path_factory.mktemp("screen"), n=300, rate=0.1, seed=0)


def _gallery(doc: str, name: str) -> list[dict]:
    m = re.search(rf"<div class='gallery' id='g-{name}'[^>]*><script type='application/json'>(.*?)</script>",
                  doc, re.DOTALL)
    return json.loads(m.group(1)) if m else []


def _render(screen, tmp_path, **kw) -> str:
    path = render_report(screen.table, screen.reports, screen.default, tmp_path / "report.html", **kw)
    return path.read_text(encoding="utf-8")


def test_decision_counts_and_evidence(screen, tmp_path):
    doc = _render(screen, tmp_path, checked=screen.checked)
    c = Counts.of(screen.table)
    assert c.flagged == int(screen.poisoned.sum()) and c.quarantined == 3  # the planted backdoor, the bad refs
    decision = re.search(r"<p id='decision' class='decision'>(.*?)</p>", doc).group(1)
    assert f"found {c.flagged} of 300 samples" in decision
    assert f"{c.flagged} of them answer “banana”" in decision
    assert "released samples does" in decision  # none of the released ones answers banana
    assert "How sure: the flagged group stands" in doc
    assert f"Approve to release {c.released} samples without the {c.flagged} flagged and the 3 quarantined" in doc
    assert "The release gate has not run yet" in doc
    answers = re.search(r"<table id='answers'.*?</table>", doc, re.DOTALL).group(0)
    first_row = re.search(r"<tbody><tr><td>(.*?)</td><td class='n'>(\d+)</td>", answers)
    assert first_row.groups() == ("banana", str(c.flagged))
    assert "a patch trigger" in doc and "<b>bottom right</b>" in doc  # the planted checkerboard's corner
    assert "no sign of a text trigger" in doc


def test_gallery_embeds_bounded_thumbnails_sorted_by_score(screen, tmp_path):
    doc = _render(screen, tmp_path, checked=screen.checked, max_flagged=10, max_borderline=5)
    flagged = _gallery(doc, "flagged")
    assert len(flagged) == 10 and all(it["thumb"].startswith("data:image/jpeg;base64,") for it in flagged)
    assert all(it["answer"].lower() == "banana" for it in flagged)
    scores = [it["score"] for it in flagged]
    assert scores == sorted(scores, reverse=True)
    assert f"Flagged (10 of {int(screen.table['flagged'].sum())})" in doc
    border = _gallery(doc, "borderline")
    assert len(border) == 5 and max(it["score"] for it in border) <= min(scores)
    quarantined = _gallery(doc, "quarantined")
    assert len(quarantined) == 3 and all(it["reason"] for it in quarantined)
    assert any(it["note"].startswith("image not shown") for it in quarantined)  # the corrupt / missing images
    # self-contained: no resource is fetched from anywhere
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", doc)
    assert "<link" not in doc and "@import" not in doc
    assert doc.count("<figure class='card'>") == 10 + 5 + 3  # first pages rendered server-side too


def test_renders_without_the_dataset(screen, tmp_path):
    doc = _render(screen, tmp_path)
    assert "rendered without the dataset" in doc and "No thumbnails" in doc
    assert "data:image/jpeg" not in doc
    assert len(_gallery(doc, "flagged")) == int(screen.table["flagged"].sum())  # ids and scores still listed
    assert re.search(r"<p id='decision' class='decision'>poisonguard found \d+ of 300 samples", doc)


def test_nothing_flagged(screen, tmp_path):
    table = screen.table.assign(flagged=False)
    reports = {**screen.reports, "shift": {**screen.reports["shift"], "accepted": False, "n_flagged": 0,
                                           "reason": "nothing flagged: K=2: separation 1.20 < 3"}}
    doc = render_report(table, reports, "shift", tmp_path / "r.html", checked=screen.checked).read_text()
    assert "found no sample that looks backdoored among the 297 usable samples" in doc
    assert "Why nothing was flagged: nothing flagged: K=2: separation 1.20 &lt; 3" in doc
    assert "Nothing was flagged, so there is nothing to compare" in doc
    assert "Approve to release 297 samples without the 3 quarantined ones" in doc


def test_gate_champion_and_skipped_detectors(screen, tmp_path):
    champion = screen_summary(screen.table, "shift", screen.checked, detector_version="3", name="drop 1")
    assert champion["flagged_answers"] == {"banana": int(screen.table["flagged"].sum())}
    doc = _render(screen, tmp_path, checked=screen.checked, gate={"success": True, "failures": []},
                  champion=champion, skipped={"projector": "no projector audit requested"}, drop="drop 2")
    assert "The release gate passed" in doc and "drop 2 ·" in doc
    champ = re.search(r"<section id='champion'>.*?</section>", doc, re.DOTALL).group(0)
    assert "drop 1" in champ and "banana (" in champ and "shift 3" in champ
    assert "Did not run: no projector audit requested" in doc
    for name in screen.reports:  # every detector that ran has a readable section with a histogram
        sec = re.search(rf"<div class='det' id='det-{name}'>.*?</div>", doc, re.DOTALL).group(0)
        assert "<b>Decision:</b> flagged" in sec and "<svg" in sec
    failed = _render(screen, tmp_path, checked=screen.checked,
                     gate={"success": False, "failures": ["flag rate 0.11 above 0.10"]})
    assert "The release gate failed: flag rate 0.11 above 0.10" in failed
    assert "Reject: there is nothing that can be released" in failed


def test_decision_sentence_all_quarantined():
    s = decision_sentence(Counts(total=5, ok=0, quarantined=5, flagged=0, released=0), None)
    assert s.startswith("poisonguard could not screen this file: all 5 samples were quarantined")


def test_attention_detector_section_shows_its_heads(screen, tmp_path):
    import numpy as np

    reports = {**screen.reports, "tcap": {"detector": "tcap", "n": 297, "n_flagged": 0,
                                          "note": "no head with K* > 1 in the last 1 layers: nothing can be flagged",
                                          "ss": np.arange(8.0).reshape(2, 4), "selected_heads": [[1, 2], [0, 3]]}}
    doc = render_report(screen.table, reports, "shift", tmp_path / "r.html", checked=screen.checked).read_text()
    sec = re.search(r"<div class='det' id='det-tcap'>.*?</div>", doc, re.DOTALL).group(0)
    assert "attention heads (selected: [(1, 2), (0, 3)])" in sec and "data:image/png;base64," in sec
    assert "Why:</b> no head with K* &gt; 1" in sec
    assert "No per-sample score in the verdict table" in sec  # tcap did not run on this table: said, not blank


def test_champion_read_back_from_a_report_folder(screen, tmp_path):
    from poisonguard.report.champion import summary_from_report_dir

    ds = screen.checked.dataset
    rep = tmp_path / "champion"
    rep.mkdir()
    screen.table.to_parquet(rep / "verdicts.parquet", index=False)
    c = Counts.of(screen.table)
    manifest = {"input": {"path": str(ds.path), "image_root": str(ds.image_root)}, "default_detector": "shift",
                "created": "2026-12-01T10:00:00+00:00"}
    (rep / "manifest.json").write_text(json.dumps(manifest))
    got = summary_from_report_dir(rep, detector_version="7")
    assert got["counts"] == {"total": c.total, "ok": c.ok, "quarantined": c.quarantined, "flagged": c.flagged,
                             "released": c.released}
    assert got["flagged_answers"] == {"banana": c.flagged} and got["created"].startswith("2026-12-01")
    doc = _render(screen, tmp_path, checked=screen.checked, champion=got)
    assert "Approved screening of 2026-12-01T10:00:00+00:00 (champion)" in doc and "shift 7" in doc
    manifest["input"]["path"] = str(tmp_path / "gone.json")
    (rep / "manifest.json").write_text(json.dumps(manifest))
    gone = summary_from_report_dir(rep)
    assert gone["flagged_answers"] == {} and "answers not compared" in gone["note"]
    assert gone["counts"]["flagged"] == c.flagged


def test_hostile_text_stays_text(screen, tmp_path):
    from dataclasses import replace

    from poisonguard.data.loading import CheckedDataset
    from poisonguard.data.records import Turn

    evil = "</script><script>document.title='pwned'</script><!-- <img src=x onerror=alert(1)>"
    flagged = set(screen.table.loc[screen.table["flagged"], "id"])
    samples = [replace(s, turns=[Turn("user", evil), Turn("assistant", s.answer)]) if s.id in flagged else s
               for s in screen.checked.dataset.samples]
    checked = CheckedDataset(replace(screen.checked.dataset, samples=samples), screen.checked.reasons,
                             screen.checked.limits)
    doc = _render(screen, tmp_path, checked=checked)
    assert evil not in doc and "<script>document" not in doc and "<img src=x" not in doc  # no live markup
    assert _gallery(doc, "flagged")[0]["question"] == evil  # the JSON still carries the text exactly
    assert doc.count("<script") == 1 + 3  # the page's own script and one JSON block per gallery list


def test_the_answer_note_names_the_flagged_samples_other_answers():
    released = ["triangle"] * 50 + ["cross"] * 50 + ["diamond"] * 50 + ["yes"] * 850
    one_target = _answer_note(ev.share_table(["banana"] * 40, released, key="answer"))
    assert "“banana” is the answer of 100" in one_target and "other answers" not in one_target
    mixed = ev.share_table(["triangle"] * 6 + ["cross"] * 3 + ["diamond"] * 2 + ["yes"], released, key="answer")
    note = _answer_note(mixed)
    assert "“triangle” is the answer of 50" in note  # half of them: still read as a target ...
    assert "The other 6 flagged samples give other answers (“cross” 3, “diamond” 2, “yes” 1)" in note
    assert "a false alarm" in note  # ... with the other reading beside it
    many = ev.share_table(["a"] * 20 + [f"w{i}" for i in range(15)], released, key="answer")  # 10 table rows
    assert "The other 15 flagged samples give other answers (“w0” 1, “w1” 1, “w2” 1, …)" in _answer_note(many)
