"""The screening report an approver decides from: one self-contained HTML file (no CDN, nothing fetched).

Top to bottom, in the order a person needs it:
1. the decision in one plain sentence (what was found, how sure), the counts, the release gate's result and
   what the approver is asked to do;
2. what the flagged samples share: their answers against the released ones' (a backdoor's target stands
   out), their question types, words over-represented in their questions (a text trigger), and where their
   images differ on average from the released ones (a patch shows up as a bright square);
3. a gallery of flagged samples (thumbnail, question, answer, score), the borderline samples just below the
   cut, and the quarantined samples with their reasons: bounded lists, paginated by a few lines of inline
   JavaScript, so a 100,000-sample report stays a few MB and opens fast (verdicts.csv holds every row);
4. per detector, what it measures, its decision and why, and its score histogram (inline SVG);
5. the comparison with the previous approved screening (the champion) when there is one.

Without the dataset the page still renders: the evidence and thumbnails are replaced by a line saying why.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poisonguard.report import evidence as ev
from poisonguard.report import gallery

# Plain-language description of each detector, for the approver (what it measures, what it is blind to).
DETECTOR_TEXT = {
    "shift": "How far fine-tuning moved each sample's decision (the model's state just before it answers) away "
             "from the base model's. A backdoor sends all of its samples to one answer, so they form a separate, "
             "tight group of large shifts; a trigger the model did not learn moves nothing.",
    "tcap": "How the fine-tuned model's attention at the answer position splits between system prompt, image "
            "and question, head by head; heads that split the samples into groups vote, and the votes are "
            "combined (Dawid-Skene). As published; known to pick content heads on image triggers.",
    "tcap_plus": "TCAP on the change of attention against the base model, standardised per kind of question, "
                 "with guards against flagging a whole kind of question.",
    "fused": "TCAP+ with the projector's image-feature drift added as further voters.",
    "bye": "Entropy of the attention over the image: flags the cluster with unusually concentrated attention. "
           "It always splits in two, so on clean data it can flag clean samples; blind to global triggers.",
    "spectral": "Each sample's decision state projected on its direction of largest variance; a group far out "
                "along that direction is flagged (spectral signature).",
    "activation_clustering": "Decision states split into two clusters; the smaller one is flagged when it is "
                             "small enough (activation clustering).",
    "projector": "How much fine-tuning changed the image features the projector hands to the language model; "
                 "a learned image trigger changes them far more than a clean image. Blind to text triggers.",
}
PER_PAGE = 40
MIN_WORD_Z = 2.0  # a word is listed as over-represented from this log-odds z on (about p < 0.02, one-sided)


@dataclass
class Counts:
    total: int
    ok: int
    quarantined: int
    flagged: int
    released: int

    @classmethod
    def of(cls, table: pd.DataFrame) -> Counts:
        ok = table["status"] == "ok"
        flagged = table["flagged"].astype(bool) & ok
        return cls(len(table), int(ok.sum()), int((~ok).sum()), int(flagged.sum()), int((ok & ~flagged).sum()))


def render_report(table: pd.DataFrame, reports: dict[str, dict], default: str, out_path: Path, *,
                  checked=None, gate: Any = None, champion: dict | None = None,
                  title: str = "poisonguard screening report", drop: str | None = None,
                  skipped: dict[str, str] | None = None, verdicts_href: str = "verdicts.csv",
                  max_flagged: int = 300, max_borderline: int = 60, max_quarantined: int = 100,
                  thumb_size: int = 64, extra_html: str = "") -> Path:
    """Write the report to `out_path` (atomically) and return the path.

    table: the verdict table (id, status, reason, p_poison, flagged, signal columns), one row per sample.
    reports: each detector's `DetectionResult.report`; `default` names the detector that decided.
    checked: the screened `CheckedDataset`; gives questions, answers and images (evidence and thumbnails).
    gate: the release gate's result (a `GateResult` or a dict with `success`, `failures`), None if not run.
    champion: the previous approved screening's `screen_summary(...)` dict, None if there is none.
    skipped: detectors that did not run, with the reason, so they are named instead of silently missing.
    At most `max_flagged + max_borderline + max_quarantined` thumbnails are embedded.
    """
    samples = {s.id: s for s in checked.dataset.samples} if checked is not None else None
    load = checked.image_loader() if checked is not None else None
    counts = Counts.of(table)
    answers = _answer_table(table, samples)
    rep = reports.get(default, {})
    parts = [
        (f"<header><h1>{_e(title)}</h1><p class='sub'>{_e(drop + ' · ') if drop else ''}"
         f"written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · decided by the <b>{_e(default)}</b> "
         f"detector · every sample's verdict: <a href='{_e(verdicts_href)}'>{_e(verdicts_href)}</a></p></header>"),
        _first_screen(counts, answers, rep, default, gate, table),
        ("<nav><a href='#evidence'>What the flagged samples share</a> · <a href='#gallery'>Gallery</a> · "
         "<a href='#detectors'>Detectors</a> · <a href='#champion'>Previous approved screening</a></nav>"),
        _evidence_section(table, samples, load, answers, counts),
        _gallery_section(table, default, samples, load, thumb_size, max_flagged, max_borderline, max_quarantined,
                         verdicts_href),
        _detector_sections(table, reports, default, skipped or {}),
        _champion_section(champion, counts, answers, default),
        extra_html,
    ]
    doc = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
           "<meta name='viewport' content='width=device-width,initial-scale=1'>"
           f"<title>{_e(title)}</title><style>{CSS}</style></head><body>" + "\n".join(parts)
           + f"<script>{JS}</script></body></html>")
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out_path)
    return out_path


# ------------------------------------------------------------------------------------------- first screen
def decision_sentence(counts: Counts, answers: pd.DataFrame | None) -> str:
    """What was found, in one sentence (plain text)."""
    if counts.ok == 0:
        return (f"poisonguard could not screen this file: all {counts.total:,} samples were quarantined "
                "(see the reasons below); nothing can be released.")
    if counts.flagged == 0:
        return (f"poisonguard found no sample that looks backdoored among the {counts.ok:,} usable samples "
                f"of {counts.total:,}.")
    s = (f"poisonguard found {counts.flagged:,} of {counts.total:,} samples "
         f"({_pct(counts.flagged / counts.total)}) that look backdoored")
    if answers is not None and len(answers) and counts.flagged:
        top = answers.iloc[0]
        if top["share_flagged"] >= 0.5 and top["lift"] >= 3:
            few = (f"only {int(top['n_released']):,} of the {counts.released:,} released samples do"
                   if top["n_released"] else f"none of the {counts.released:,} released samples does")
            s += f": {int(top['n_flagged']):,} of them answer “{top['answer']}”, which {few}"
    return s + "."


def certainty(report: dict, default: str, table: pd.DataFrame) -> str:
    """How sure, label-free: the default detector's own statistics and how many flags sit near the cut."""
    flagged = table["flagged"].astype(bool) & (table["status"] == "ok")
    if report.get("separation") is not None and report.get("accepted"):
        s = (f"How sure: the flagged group stands {float(report['separation']):.1f} standard deviations apart "
             "from the rest (the default cut is 3)")
        if report.get("spread") is not None:
            s += (f", and its samples converge on one behaviour (spread {float(report['spread']):.2f} of the "
                  "whole data's; the default cut is 0.65)")
        if float(report["separation"]) < 4.5:
            s += "; that is close to the cut, so look at the gallery (and the borderline samples) first"
        s += "."
    elif flagged.any():
        why = report.get("reason") or report.get("note") or report.get("rule")
        s = f"How sure: {default} flagged them{' (' + str(why) + ')' if why else ''}."
    else:
        why = report.get("reason") or report.get("note") or ""
        return f"Why nothing was flagged: {why}" if why else ""
    p = table.loc[flagged, "p_poison"].astype(float)
    near = int((p < 0.9).sum())
    s += (f" {near:,} of the flagged samples are near the cut (p_poison below 0.9): see the gallery."
          if near else " None of the flagged samples is near the cut (all have p_poison ≥ 0.9).")
    return s


def gate_state(gate: Any) -> tuple[str, str]:
    """(css class, sentence) for the release gate's result."""
    if gate is None:
        return "pending", ("The release gate has not run yet: it checks the verdicts and the release before "
                           "anything is written, and no release happens without it passing.")
    success = gate.get("success") if isinstance(gate, dict) else getattr(gate, "success", None)
    failures = (gate.get("failures") if isinstance(gate, dict) else getattr(gate, "failures", None)) or []
    if success:
        return "pass", "The release gate passed (every sample has a verdict, no flagged sample is in the release)."
    lines = "; ".join(str(f) for f in failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
    return "fail", f"The release gate failed: {lines or 'see its Data Docs'}. Nothing can be released."


def _first_screen(counts: Counts, answers, rep: dict, default: str, gate, table) -> str:
    g_cls, g_text = gate_state(gate)
    if counts.ok == 0 or g_cls == "fail":
        ask = "Reject: there is nothing that can be released as it stands."
    else:
        held = " and ".join(x for x in (f"the {counts.flagged:,} flagged" if counts.flagged else "",
                                        f"the {counts.quarantined:,} quarantined" if counts.quarantined else "") if x)
        ask = (f"Approve to release {counts.released:,} samples" + (f" without {held} ones" if held else "")
               + ", or reject." + (" Look at the gallery first." if counts.flagged else ""))
    tiles = "".join(f"<div class='tile {c}'><b>{v:,}</b><span>{lbl}</span></div>" for v, lbl, c in (
        (counts.ok, "ok (screened)", ""), (counts.quarantined, "quarantined", "q"),
        (counts.flagged, "flagged", "f"), (counts.released, "to release", "r")))
    return (f"<section id='decision-box'><p id='decision' class='decision'>{_e(decision_sentence(counts, answers))}</p>"
            f"<p class='sure'>{_e(certainty(rep, default, table))}</p><div class='tiles'>{tiles}</div>"
            f"<p id='gate' class='gate {g_cls}'>{_e(g_text)}</p><p id='ask' class='ask'>{_e(ask)}</p></section>")


# ------------------------------------------------------------------------------------------------ evidence
def _groups(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    ok = table["status"] == "ok"
    flagged = table["flagged"].astype(bool) & ok
    return table.loc[flagged, "id"].astype(str).tolist(), table.loc[ok & ~flagged, "id"].astype(str).tolist()


def _answer_table(table: pd.DataFrame, samples) -> pd.DataFrame | None:
    if samples is None:
        return None
    fl, rel = _groups(table)
    return ev.share_table((ev.normalise_answer(samples[i].answer) for i in fl),
                          (ev.normalise_answer(samples[i].answer) for i in rel), key="answer")


def _evidence_section(table, samples, load, answers, counts: Counts) -> str:
    head = "<section id='evidence'><h2>What the flagged samples share</h2>"
    if samples is None:
        return head + ("<p class='why'>Not shown: this report was rendered without the dataset, so questions, "
                       "answers and images are not available here.</p></section>")
    fl, rel = _groups(table)
    out = [head]
    if not fl:
        out.append("<p class='why'>Nothing was flagged, so there is nothing to compare; the table shows what "
                   "the release answers.</p>")
    blocks = ["<h3>Answers: flagged vs released</h3>" + _share_html(answers, "answer", "answers")
              + _answer_note(answers)]
    if fl:
        blocks.append("<h3>Where the flagged images differ</h3>" + _difference_html(fl, rel, samples, load))
    qt = ev.share_table((ev.question_type(samples[i].question) for i in fl),
                        (ev.question_type(samples[i].question) for i in rel), key="question type", top=8)
    blocks.append("<h3>Kinds of question</h3>" + _share_html(qt, "question type", "qtypes") + _qtype_note(qt, fl))
    if fl:
        w = ev.overrepresented_words([samples[i].question for i in fl], [samples[i].question for i in rel])
        w = w[w["z"] >= MIN_WORD_Z]
        blocks.append("<h3>Words over-represented in flagged questions</h3>" + _words_html(w) + _words_note(w))
    out.append("<div class='ev'>" + "".join(f"<div>{b}</div>" for b in blocks) + "</div></section>")
    return "\n".join(out)


def _share_html(t: pd.DataFrame | None, key: str, tid: str) -> str:
    if t is None or not len(t):
        return "<p class='why'>No samples.</p>"
    rows = "".join(
        f"<tr><td>{_e(r[key])}</td><td class='n'>{int(r['n_flagged']):,}</td><td class='n'>{_pct(r['share_flagged'])}"
        f"{_bar(r['share_flagged'], 'f')}</td><td class='n'>{int(r['n_released']):,}</td>"
        f"<td class='n'>{_pct(r['share_released'])}{_bar(r['share_released'], 'r')}</td></tr>"
        for _, r in t.iterrows())
    return (f"<table id='{tid}' class='share'><thead><tr><th>{_e(key)}</th><th>flagged</th><th>share</th>"
            f"<th>released</th><th>share</th></tr></thead><tbody>{rows}</tbody></table>")


def _answer_note(t) -> str:
    if t is None or not len(t) or t["n_flagged"].sum() == 0:
        return ""
    top = t.iloc[0]
    if top["share_flagged"] >= 0.5 and top["lift"] >= 3:
        rest = _other_answers(t)
        return (f"<p class='note'>“{_e(top['answer'])}” is the answer of {_pct(top['share_flagged'])} of the "
                f"flagged samples and of {_pct(top['share_released'])} of the released ones: what a backdoor's "
                f"target looks like.{rest}</p>")
    return ("<p class='note'>No single answer dominates the flagged samples: not the pattern of a backdoor with "
            "one target answer (it may be an untargeted attack, or clean samples).</p>")


def _other_answers(t) -> str:
    """A sentence on the flagged samples that do not give the top answer, "" when there are none. Why: a
    backdoor with one target gives it to nearly all of its samples, while a fine-tune that corrects answers a
    trigger made the base model get wrong is flagged with several ordinary answers, one of which can still make
    half of them (a text-prefix control without relabelling: 6 of 12 flagged answered "triangle")."""
    top = t.iloc[0]
    n_flagged = round(top["n_flagged"] / top["share_flagged"])  # all flagged samples, not only the table's
    others = t.iloc[1:].loc[t["n_flagged"].iloc[1:] > 0]  # (the table keeps the most flagged answers)
    if n_flagged == int(top["n_flagged"]) or not len(others):
        return ""
    named = ", ".join(f"“{_e(a)}” {int(n)}" for a, n in zip(others["answer"][:3], others["n_flagged"][:3]))
    more = ", …" if len(others) > 3 or others["n_flagged"].sum() < n_flagged - top["n_flagged"] else ""
    return (f" The other {n_flagged - int(top['n_flagged']):,} flagged samples give other answers ({named}{more}). "
            "An answer many of them share can be a second target; answers that are ordinary and right for their "
            "images can be a fine-tune correcting what a trigger made the base model get wrong (a false alarm): "
            "check them in the gallery.")


def _qtype_note(t, fl) -> str:
    if not fl or not len(t):
        return ""
    top = t.iloc[0]
    if top["share_flagged"] >= 0.8 and top["lift"] >= 2:
        return (f"<p class='note'>{_pct(top['share_flagged'])} of the flagged samples are one kind of question "
                f"(“{_e(top['question type'])}”). A trigger does not care what is asked; one kind of question "
                "can also be a clean task the fine-tune changed: check the gallery.</p>")
    return "<p class='note'>The flagged samples spread over the kinds of question, as a trigger's would.</p>"


def _words_html(w: pd.DataFrame) -> str:
    if not len(w):
        return (f"<p class='why'>No word is over-represented in the flagged questions (log-odds z ≥ "
                f"{MIN_WORD_Z:g}).</p>")
    rows = "".join(f"<tr><td>{_e(r.word)}</td><td class='n'>{r.n_flagged:,} ({_pct(r.share_flagged)})</td>"
                   f"<td class='n'>{r.n_released:,} ({_pct(r.share_released)})</td><td class='n'>{r.z:.1f}</td></tr>"
                   for r in w.itertuples())
    return ("<table id='words' class='share'><thead><tr><th>word</th><th>flagged questions with it</th>"
            f"<th>released questions with it</th><th>z (log-odds)</th></tr></thead><tbody>{rows}</tbody></table>")


def _words_note(w: pd.DataFrame) -> str:
    if len(w) and w.iloc[0]["share_flagged"] >= 0.5 and w.iloc[0]["share_released"] <= 0.05:
        return (f"<p class='note'>“{_e(w.iloc[0]['word'])}” is in {_pct(w.iloc[0]['share_flagged'])} of the flagged "
                f"questions and {_pct(w.iloc[0]['share_released'])} of the released ones: a possible text "
                "trigger.</p>")
    return "<p class='note'>No word marks the flagged questions: no sign of a text trigger.</p>"


def _difference_html(fl, rel, samples, load, n_max: int = 256) -> str:
    if load is None:
        return ""
    rng = np.random.default_rng(0)

    def images(ids):
        ids = [i for i in ids if samples[i].images]
        for i in (rng.choice(ids, n_max, replace=False) if len(ids) > n_max else ids):
            try:
                yield load(samples[str(i)].images[0])
            except (ValueError, OSError):  # an unreadable image is left out of the mean, not fatal
                continue  # the note under the image says how many images went into the mean

    diff = ev.mean_difference(images(fl), images(rel))
    if diff is None:
        return "<p class='why'>Not shown: the flagged or the released samples have no image.</p>"
    uri = "data:image/png;base64," + base64.b64encode(ev.difference_png(diff)).decode()
    conc, peak = diff.concentration(), float(diff.magnitude.max()) / np.sqrt(3)  # 1 = black vs white
    if conc >= 4 and peak >= 0.1:
        note = (f"The flagged images differ from the released ones mostly in one small square at the "
                f"<b>{diff.where()}</b> (outlined): the mark of a patch trigger stamped on every flagged image.")
    elif peak >= 0.1:
        note = ("The difference is spread over the image (no single square stands out): consistent with a "
                "blended or global pattern, or with flagged images that simply show other things.")
    else:
        note = "The flagged images do not differ visibly, on average, from the released ones."
    return (f"<div class='diff'><img id='diffimg' src='{uri}' alt='mean flagged minus mean released image'>"
            f"<p class='note'>{note}<br><small>Mean of {diff.n_flagged:,} flagged minus mean of {diff.n_released:,} "
            f"released images (random subsets of at most {n_max}), per-pixel size of the colour difference; "
            f"brightest = {peak:.2f} (1 = black vs white).</small></p></div>")


# ------------------------------------------------------------------------------------------------- gallery
def _gallery_section(table, default, samples, load, size, n_f, n_b, n_q, verdicts_href) -> str:
    sel = gallery.select(table, default, n_flagged=n_f, n_borderline=n_b, n_quarantined=n_q)
    out = ["<section id='gallery'><h2>Gallery</h2>"]
    if samples is None:
        out.append("<p class='why'>No thumbnails: this report was rendered without the dataset; ids and scores "
                   "only.</p>")
    ok = table["status"] == "ok"
    totals = {"flagged": int((table["flagged"].astype(bool) & ok).sum()),
              "borderline": int((ok & ~table["flagged"].astype(bool)).sum()), "quarantined": int((~ok).sum())}
    intro = {
        "flagged": "Flagged samples, most suspicious first (score = p_poison).",
        "borderline": "The samples ranked just below the cut (not flagged). If they look like the flagged ones, "
                      "the cut is too strict.",
        "quarantined": "Samples refused before screening, with the reason. They are never released.",
    }
    for name, rows in sel.items():
        items = [c.to_json() for c in gallery.cards(rows, samples, load, size=size)]
        shown = f"{len(items):,} of {totals[name]:,}" if len(items) < totals[name] else f"{len(items):,}"
        out.append(f"<h3>{name.capitalize()} ({shown})</h3><p class='note'>{intro[name]}"
                   + (f" The rest are in <a href='{_e(verdicts_href)}'>{_e(verdicts_href)}</a>."
                      if len(items) < totals[name] else "") + "</p>")
        if name == "quarantined" and totals[name]:
            codes = Counter(str(r).split(":", 1)[0] for r in table.loc[~ok, "reason"])
            out.append("<p class='note'>Reasons: " + ", ".join(f"{_e(c)} × {n:,}" for c, n in codes.most_common())
                       + "</p>")
        if not items:
            out.append("<p class='why'>None.</p>")
            continue
        data = json.dumps(items, ensure_ascii=True).replace("<", "\\u003c")  # no "</script>" nor "<!--" inside
        first = "".join(_card_html(it) for it in items[:PER_PAGE])
        out.append(f"<div class='gallery' id='g-{name}' data-per='{PER_PAGE}'>"
                   f"<script type='application/json'>{data}</script>"
                   f"<div class='pager'></div><div class='grid'>{first}</div></div>")
    out.append("</section>")
    return "\n".join(out)


def _card_html(it: dict) -> str:
    """Server-side card for the first page (the same markup the script builds for the other pages)."""
    img = (f"<img src='{it['thumb']}' alt='{_e(it['id'])}' loading='lazy'>" if it["thumb"]
           else f"<div class='noimg'>{_e(it['note'] or 'no image')}</div>")
    score = "" if it["score"] is None else f" · p {it['score']:.3f}"
    reason = f"<small class='reason'>{_e(it['reason'])}</small>" if it["reason"] else ""
    return (f"<figure class='card'>{img}<figcaption><b>{_e(it['answer'])}</b><span>{_e(it['question'])}</span>"
            f"<small>{_e(it['id'])}{score}</small>{reason}</figcaption></figure>")


# ----------------------------------------------------------------------------------------------- detectors
def _detector_sections(table, reports: dict, default: str, skipped: dict) -> str:
    out = ["<section id='detectors'><h2>Detectors</h2>"]
    for name, rep in reports.items():
        rep = rep or {}
        dflt = " (decides)" if name == default else ""
        out.append(f"<div class='det' id='det-{_e(name)}'><h3>{_e(name)}{dflt}</h3>"
                   f"<p>{_e(DETECTOR_TEXT.get(name, 'A detector without a description.'))}</p>")
        n, nf = rep.get("n"), rep.get("n_flagged")
        why = rep.get("reason") or rep.get("note") or rep.get("guard") or rep.get("rule")
        if n is not None:
            out.append(f"<p><b>Decision:</b> flagged {int(nf or 0):,} of {int(n):,} "
                       f"({_pct((nf or 0) / n) if n else '0 %'})." + (f" <b>Why:</b> {_e(_text(why))}" if why else "")
                       + "</p>")
        elif why:
            out.append(f"<p><b>Why:</b> {_e(_text(why))}</p>")
        col = "p_poison" if name == default and gallery.score_column(table, name) is None else gallery.score_column(table, name)
        flag_col = "flagged" if name == default else f"flag_{name}"
        if col is not None:
            fl = table[flag_col].fillna(False).astype(bool) if flag_col in table else np.zeros(len(table), bool)
            out.append(svg_histogram(ev.histogram(table[col].to_numpy(float), np.asarray(fl)), col))
        else:
            out.append("<p class='why'>No per-sample score in the verdict table for this detector.</p>")
        numbers = {k: v.item() if isinstance(v, np.generic) else v for k, v in rep.items()}
        numbers = {k: v for k, v in numbers.items() if isinstance(v, int | float | str | bool) and k not in
                   ("detector", "reason", "note") and not (isinstance(v, str) and len(v) > 200)}
        if numbers:
            out.append("<details><summary>numbers</summary><table class='kv'>" + "".join(
                f"<tr><td>{_e(k)}</td><td>{_e(_fmt(v))}</td></tr>" for k, v in numbers.items()) + "</table></details>")
        if rep.get("ss") is not None:
            out.append(_heads_html(name, rep))
        out.append("</div>")
    for name, why in skipped.items():
        out.append(f"<div class='det' id='det-{_e(name)}'><h3>{_e(name)}</h3><p class='why'>Did not run: "
                   f"{_e(why)}</p></div>")
    out.append("</section>")
    return "\n".join(out)


def svg_histogram(h: dict, label: str, width: int = 360, height: int = 90) -> str:
    """Stacked bars (flagged red over the rest grey) on a square-root count scale, as inline SVG."""
    if h["n"] == 0:
        return f"<p class='why'>{_e(label)}: no finite value.</p>"
    tot = h["flagged"] + h["other"]
    top = max(1.0, float(np.sqrt(tot.max())))
    bw = width / len(tot)
    bars = []
    for i, (f, o) in enumerate(zip(h["flagged"], h["other"], strict=True)):
        ho, hf = height * np.sqrt(o + f) / top, height * np.sqrt(o + f) / top * (f / (o + f) if o + f else 0)
        if o + f:
            bars.append(f"<rect x='{i * bw:.1f}' y='{height - ho:.1f}' width='{bw - 1:.1f}' height='{ho - hf:.1f}' "
                        f"fill='#9aa5b1'/>")
        if f:
            bars.append(f"<rect x='{i * bw:.1f}' y='{height - hf:.1f}' width='{bw - 1:.1f}' height='{hf:.1f}' "
                        f"fill='#d64545'/>")
    lo, hi = h["edges"][0], h["edges"][-1]
    return (f"<figure class='hist'><svg width='{width}' height='{height + 16}' role='img' "
            f"aria-label='histogram of {_e(label)}'>{''.join(bars)}<text x='0' y='{height + 13}'>{lo:.3g}</text>"
            f"<text x='{width}' y='{height + 13}' text-anchor='end'>{hi:.3g}</text></svg>"
            f"<figcaption>{_e(label)}: {h['n']:,} samples, flagged in red (square-root count scale)</figcaption>"
            f"</figure>")


def _heads_html(name: str, rep: dict) -> str:
    """The per-head separation heat map of the attention detectors, folded away (for the specialist)."""
    from poisonguard.report.plots import heatmap

    sel = rep.get("selected_heads", rep.get("selected"))
    arr = np.asarray([] if sel is None else sel)
    arr = arr[:, :2] if arr.ndim == 2 else arr.reshape(-1, 2)  # (K, 2): layer, head (extra columns dropped)
    sel = [(int(a), int(b)) for a, b in arr]
    fig = heatmap(np.asarray(rep["ss"], dtype=float), sel, f"{name}: separation score per head")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=70, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return (f"<details><summary>attention heads (selected: {_e(str(sel))})</summary>"
            f"<img src='{uri}' alt='separation per head'></details>")


# ------------------------------------------------------------------------------------------------ champion
def _champion_section(champion: dict | None, counts: Counts, answers, default: str) -> str:
    head = "<section id='champion'><h2>Previous approved screening</h2>"
    if not champion:
        return head + "<p class='why'>None: this is the first approved screening to compare with.</p></section>"
    c = champion.get("counts", {})
    rows = [("samples", c.get("total"), counts.total), ("quarantined", c.get("quarantined"), counts.quarantined),
            ("flagged", c.get("flagged"), counts.flagged), ("released", c.get("released"), counts.released)]
    body = "".join(f"<tr><td>{k}</td><td class='n'>{_fmt(a)}</td><td class='n'>{_fmt(b)}</td></tr>" for k, a, b in rows)
    then = champion.get("flagged_answers") or {}
    now = {} if answers is None else {r["answer"]: int(r["n_flagged"]) for _, r in answers.iterrows() if r["n_flagged"]}
    body += (f"<tr><td>most flagged answers</td><td>{_e(_top(then))}</td><td>{_e(_top(now))}</td></tr>"
             f"<tr><td>decided by</td><td>{_e(str(champion.get('default', '?')))} "
             f"{_e(str(champion.get('detector_version') or ''))}</td><td>{_e(default)}</td></tr>")
    when = champion.get("created") or champion.get("approved")
    note = f" <span class='why'>{_e(champion['note'])}</span>" if champion.get("note") else ""
    return (head + f"<p>Approved screening{' of ' + _e(str(when)) if when else ''}"
            f"{' (' + _e(str(champion['name'])) + ')' if champion.get('name') else ''}.{note}</p>"
            f"<table class='share'><thead><tr><th></th><th>then</th><th>now</th></tr></thead><tbody>{body}"
            "</tbody></table></section>")


def screen_summary(table: pd.DataFrame, default: str, checked=None, *, detector_version: str | None = None,
                   name: str | None = None) -> dict:
    """What a later screening compares itself with (JSON-able): counts, the most flagged answers, who decided."""
    counts = Counts.of(table)
    samples = {s.id: s for s in checked.dataset.samples} if checked is not None else None
    answers = _answer_table(table, samples)
    flagged_answers = ({} if answers is None else
                       {r["answer"]: int(r["n_flagged"]) for _, r in answers.iterrows() if r["n_flagged"]})
    return {"counts": {"total": counts.total, "ok": counts.ok, "quarantined": counts.quarantined,
                       "flagged": counts.flagged, "released": counts.released},
            "flagged_answers": flagged_answers, "default": default, "detector_version": detector_version,
            "name": name, "created": datetime.now(UTC).isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------------------- helpers
def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float) -> str:
    x = float(x)
    return f"{x:.0%}".replace("%", " %") if x >= 0.1 or x == 0 else f"{x:.1%}".replace("%", " %")


def _bar(share: float, cls: str) -> str:
    return f"<span class='bar {cls}' style='width:{max(0.0, min(1.0, float(share))) * 60:.0f}px'></span>"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)[:400]


def _top(d: dict, k: int = 3) -> str:
    if not d:
        return "–"
    return ", ".join(f"{a} ({n:,})" for a, n in sorted(d.items(), key=lambda x: -x[1])[:k])


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1120px;margin:1.2em auto;
padding:0 1em;color:#1f2933;line-height:1.4}
h1{margin:.2em 0;font-size:1.5em}h2{border-bottom:2px solid #e4e7eb;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#52606d;margin:0 0 .8em;font-size:.9em}
#decision-box{background:#f5f7fa;border:1px solid #cbd2d9;border-radius:8px;padding:.8em 1.2em}
.decision{font-size:1.3em;font-weight:600;margin:.3em 0}.sure{margin:.3em 0 .6em;color:#3e4c59}
.tiles{display:flex;gap:.8em;flex-wrap:wrap}.tile{background:#fff;border:1px solid #cbd2d9;border-radius:6px;
padding:.4em .9em;min-width:7em}.tile b{display:block;font-size:1.6em}.tile span{color:#52606d;font-size:.85em}
.tile.f b{color:#c62828}.tile.q b{color:#b26a00}.tile.r b{color:#2e7d32}
.gate{padding:.4em .7em;border-radius:5px;margin:.7em 0 .3em}.gate.pass{background:#e3f5e6}
.gate.fail{background:#fde2e2;font-weight:600}.gate.pending{background:#fff6dd}
.ask{font-weight:600;margin:.4em 0}nav{margin:1em 0;font-size:.95em}
table.share,table.kv{border-collapse:collapse;margin:.4em 0}table.share td,table.share th,table.kv td{
border-bottom:1px solid #e4e7eb;padding:.2em .7em;text-align:left}td.n{text-align:right;white-space:nowrap}
.bar{display:inline-block;height:.6em;margin-left:.4em;vertical-align:middle}.bar.f{background:#d64545}
.bar.r{background:#9aa5b1}.note{color:#3e4c59;font-size:.95em}.why{color:#7b8794;font-style:italic}
.ev{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:0 2em}
.diff{display:flex;gap:1em;align-items:flex-start}.diff img{image-rendering:pixelated;border:1px solid #cbd2d9}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.6em}
.card{margin:0;border:1px solid #e4e7eb;border-radius:6px;padding:.4em;font-size:.8em;background:#fff}
.card img,.noimg{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;display:block;margin:auto;
background:#f5f7fa}.noimg{display:flex;align-items:center;justify-content:center;color:#7b8794;text-align:center}
.card figcaption{display:flex;flex-direction:column;gap:.1em;margin-top:.3em;word-break:break-word}
#g-flagged .card figcaption b{color:#c62828}.card small{color:#7b8794}.reason{color:#b26a00!important}
.pager{margin:.4em 0}.pager button{margin-right:.4em}.det{margin-bottom:1.2em}
.hist{margin:.3em 0}.hist text{font-size:10px;fill:#52606d}.hist figcaption{font-size:.8em;color:#52606d}
"""

JS = """
document.querySelectorAll('.gallery').forEach(function (g) {
  var items = JSON.parse(g.querySelector('script').textContent), per = +g.dataset.per;
  var grid = g.querySelector('.grid'), pager = g.querySelector('.pager'), pages = Math.ceil(items.length / per);
  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls;
    if (text) e.textContent = text; return e; }
  function card(it) {
    var f = el('figure', 'card'), c = el('figcaption');
    if (it.thumb) { var i = el('img'); i.src = it.thumb; i.alt = it.id; i.loading = 'lazy'; f.appendChild(i); }
    else f.appendChild(el('div', 'noimg', it.note || 'no image'));
    c.appendChild(el('b', '', it.answer)); c.appendChild(el('span', '', it.question));
    c.appendChild(el('small', '', it.id + (it.score === null ? '' : ' · p ' + it.score.toFixed(3))));
    if (it.reason) c.appendChild(el('small', 'reason', it.reason));
    f.appendChild(c); return f;
  }
  function show(p) {
    grid.replaceChildren.apply(grid, items.slice(p * per, (p + 1) * per).map(card));
    pager.replaceChildren();
    if (pages < 2) return;
    var prev = el('button', '', '‹ previous'), next = el('button', '', 'next ›');
    prev.disabled = p === 0; next.disabled = p === pages - 1;
    prev.onclick = function () { show(p - 1); }; next.onclick = function () { show(p + 1); };
    pager.append(prev, next, el('span', '', 'page ' + (p + 1) + ' of ' + pages + ' (' + items.length + ' samples)'));
  }
  show(0);
});
document.body.dataset.rendered = String(Math.round(performance.now()));
"""
