"""Make docs/report.png: the report of a real screening of a small poisoned embedded world.

A small world (the test suite's tiny model, more samples), BadNet-poisoned at 30 % with target `banana`,
screened end to end (fine-tune, extraction, `shift` + `spectral`, no projector audit), its report rendered
and photographed in headless Chromium. About a few minutes on 2 cores.

    python docs/report_screenshot.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--epochs", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    p.add_argument("--height", type=int, default=2000, help="screenshot height in px (the page's top)")
    a = p.parse_args(argv)

    from poisonguard.attacks.files import poison_file
    from poisonguard.report.browser import screenshot
    from poisonguard.pipeline.config import PipelineConfig, override
    from poisonguard.pipeline.screen import run_screen
    from poisonguard.world.build import make_world
    from poisonguard.world.model import WorldModelConfig
    from poisonguard.world.pretrain import PretrainConfig

    work = a.keep or Path(tempfile.mkdtemp(prefix="pg-report-shot-"))
    world = work / "world"
    if not (world / "base_model").is_dir():
        make_world(world, seed=3, n_train=a.n_train, n_test=6, show_progress=False,
                   model_cfg=WorldModelConfig(vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
                                              lm_hidden=32, lm_layers=2, lm_heads=2, lm_mlp=64),
                   pretrain_cfg=PretrainConfig(n_scenes=64, vision_steps=3, vision_batch=16, lm_steps=4,
                                               lm_batch=8))
    if not (work / "poisoned" / "train.json").is_file():
        poison_file(world / "train.json", work / "poisoned", "badnet", 0.3, target="banana", seed=0)
    rep = work / "report"
    done = rep / "finetuned"  # a kept folder re-renders without fine-tuning again
    cfg = override(PipelineConfig(), finetune={"epochs": a.epochs, "batch_size": 32},
                   extract_attention={"batch_size": 32}, audit_projector={"enabled": False},
                   profile_heads={"strata_k": 2}, fit_gmm={"detectors": {"shift": {}, "spectral": {}}},
                   em_vote={"annotators": ("shift", "spectral")})
    res = run_screen(work / "poisoned" / "train.json", world / "base_model", rep, config=cfg,
                     finetuned=done if (done / "config.json").is_file() else None, show_progress=False)
    print(f"{len(res.flagged_ids)} flagged; report: {rep / 'report.html'}")
    from PIL import Image

    screenshot(rep / "report.html", a.out, width=1100, height=a.height)
    img = Image.open(a.out).convert("RGB")
    img.save(a.out, optimize=True)
    if a.out.stat().st_size > 450_000:  # keep the repository light: a 256-colour palette is enough for a page
        img.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE).save(a.out, optimize=True)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
