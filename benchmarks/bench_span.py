"""The answer-span signal and the `span` detector measured on a real screened drop (issue 16, Build 3–4).

    python benchmarks/bench_span.py                       # the demo drop of /work/main/work (see defaults)
    python benchmarks/bench_span.py --data D/train.json --truth D/poison_ids.json --base B --finetuned F \
        --out /tmp/span_bench [--clean W/train.json]

Steps, each on the real extraction path (`extract.span.extract_span_to_dir`, the model passes of
`models.model_passes`, so an adapter folder works: base = adapter off):
1. teacher-forced answer-span log-probabilities of the drop under the fine-tuned and the base model
   (reused from `--out` when already computed for this very plan);
2. the `span` detector with its defaults: AUROC of its score, P / R / F1 of its cut, the number flagged,
   the reason it reports;
3. the base-model control: the base's log-probabilities in place of the fine-tuned ones (gain exactly 0);
4. the cut at other poison rates (0.5 %–20 %): every clean sample of the drop plus a random subset of its
   poisoned ones (3 draws each). The fine-tune is still the one trained on the whole drop, so this checks the
   cut's statistics at low and high rates, not whether a fine-tune learns a 0.5 % backdoor. A rate above the
   drop's own is capped at all its poisoned samples (`rate_actual`);
5. with `--clean`: the clean training set (no triggers, correct answers) under the same two models. This is
   not a clean fine-tune (none is available in the world), only "the backdoored model on trigger-free data".
Writes `--out/span_bench.json` and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from poisonguard.detect.features import FeatureSet
from poisonguard.detect.metrics import auroc, precision_recall_f1
from poisonguard.detect.span import AnswerSpanDetector, answer_gain
from poisonguard.extract.span import extract_span_to_dir
from poisonguard.models import model_passes
from poisonguard.pipeline.extraction import plan_extraction
from poisonguard.pipeline.validate import validate_for_model
from poisonguard.runtime import resolve_runtime, set_threads
from poisonguard.train.examples import LazyExamples

WORK = Path("/work/main/work")


def extract_pair(data: Path, base: Path, finetuned: Path, out: Path, *, batch_size: int, max_tokens: int,
                 log=print) -> FeatureSet:
    """Both models' span log-probabilities of `data`'s usable samples, as a FeatureSet."""
    checked = validate_for_model(data, base)
    plan = plan_extraction(checked, base, finetuned)
    answers = LazyExamples(checked.ok, checked.image_loader(), prompt_only=False)
    runtime = resolve_runtime("cpu", "float32")
    got = {}
    for name, model, processor in model_passes(base, finetuned, runtime):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        got[name] = extract_span_to_dir(model, processor, answers, plan.ids, folder, tag=plan.tags[name],
                                        inputs=plan.inputs, max_tokens=max_tokens, batch_size=batch_size,
                                        log=log)
        log(f"{name}: {len(plan.ids)} samples in {time.perf_counter() - t0:.0f} s")
        del model, processor
    return FeatureSet(ids=np.asarray(plan.ids), answer_logp=got["finetuned"].logp,
                      answer_logp_base=got["base"].logp)


def measure(fs: FeatureSet, truth: set[str] | None) -> dict:
    res = AnswerSpanDetector().detect(fs)
    out = {"n": fs.n, "n_flagged": int(res.flagged.sum()), "reason": res.report["reason"],
           "report": {k: v for k, v in res.report.items() if k not in ("reason",)}}
    if truth is not None:
        y = np.isin(fs.ids, sorted(truth))
        p, r, f1 = precision_recall_f1(res.flagged, y)
        gain = answer_gain(fs.answer_logp, fs.answer_logp_base)
        out.update(n_poison=int(y.sum()), precision=p, recall=r, f1=f1,
                   auroc=auroc(res.signals["score_span"], y),
                   auroc_max=auroc(gain["max"], y), auroc_mean=auroc(gain["mean"], y),
                   clean_gain_max_quantiles={q: float(np.quantile(gain["max"][~y], q))
                                             for q in (0.5, 0.9, 0.99, 0.999, 1.0)},
                   poison_gain_max_quantiles={q: float(np.quantile(gain["max"][y], q))
                                              for q in (0.0, 0.01, 0.5)} if y.any() else None)
    return out


def subsampled(fs: FeatureSet, truth: set[str], rates=(0.005, 0.01, 0.02, 0.05, 0.2), draws: int = 3) -> list:
    """The cut on the drop's clean samples plus `rate` worth of its poisoned ones (at most all of them)."""
    y = np.isin(fs.ids, sorted(truth))
    clean, poisoned = np.flatnonzero(~y), np.flatnonzero(y)
    rows = []
    for rate in rates:
        k = min(round(rate * clean.size / (1 - rate)), poisoned.size)
        for draw in range(draws):
            idx = np.r_[clean, np.random.default_rng(draw).choice(poisoned, k, replace=False)]
            res = AnswerSpanDetector().detect(fs.subset(idx))
            p, r, f1 = precision_recall_f1(res.flagged, y[idx])
            rows.append({"rate": rate, "rate_actual": round(k / idx.size, 4), "draw": draw, "n_poison": int(k), "n_flagged": int(res.flagged.sum()),
                         "false_flags": int((res.flagged & ~y[idx]).sum()), "precision": p, "recall": r,
                         "f1": f1, "ashman_d": res.report["ashman_d"]})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=WORK / "poisoned" / "train.json")
    ap.add_argument("--truth", type=Path, default=WORK / "poisoned" / "poison_ids.json")
    ap.add_argument("--base", type=Path, default=WORK / "world" / "base_model")
    ap.add_argument("--finetuned", type=Path, default=WORK / "finetuned")
    ap.add_argument("--clean", type=Path, default=None, help="a trigger-free set (e.g. the world's train.json)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/span_bench"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    set_threads(None, args.threads)
    truth = set(json.loads(args.truth.read_text())["poison_ids"])
    t0 = time.perf_counter()
    drop = extract_pair(args.data, args.base, args.finetuned, args.out / "drop", batch_size=args.batch_size,
                        max_tokens=args.max_tokens)
    result = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}), CPU float32, "
                         f"{args.threads} threads",
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "data": str(args.data),
              "finetuned": str(args.finetuned), "drop": measure(drop, truth),
              "base_model_control": measure(FeatureSet(ids=drop.ids, answer_logp=drop.answer_logp_base,
                                                       answer_logp_base=drop.answer_logp_base), truth)}
    result["subsampled_rates"] = subsampled(drop, truth)
    if args.clean is not None:
        clean = extract_pair(args.clean, args.base, args.finetuned, args.out / "clean",
                             batch_size=args.batch_size, max_tokens=args.max_tokens)
        result["clean_set_same_finetune"] = measure(clean, set())
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "span_bench.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
