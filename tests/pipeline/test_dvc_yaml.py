"""dvc.yaml says what each stage runs: its deps cover every code file the stage script can import, its
params are the section it reads, and every stage of the pipeline is there in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from poisonguard.pipeline.config import load_config
from tests.pipeline.imports import ROOT, closure

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PIPELINE = ["world", "poison", "finetune", "extract_attention", "audit_projector", "profile_heads", "fit_gmm",
            "em_vote", "gate", "release"]


def test_the_pipeline_stages_in_order():
    assert list(DVC) == PIPELINE


@pytest.mark.parametrize("stage", PIPELINE)
def test_deps_cover_all_code_the_stage_imports(stage):
    spec = DVC[stage]
    script = ROOT / spec["cmd"].split()[-1]
    deps = [ROOT / d for d in spec["deps"]]
    missing = sorted(str(f.relative_to(ROOT)) for f in closure(script)
                     if not any(f == d or d in f.parents for d in deps))
    assert not missing, f"{stage}: code it imports is not in its deps: {missing}"
    for d in deps:
        if "work" not in d.parts:
            assert d.exists(), f"{stage}: dep {d.relative_to(ROOT)} does not exist"


@pytest.mark.parametrize("stage", PIPELINE)
def test_params_are_the_section_the_stage_reads(stage):
    script = (ROOT / DVC[stage]["cmd"].split()[-1]).read_text()
    sections = DVC[stage]["params"]
    read = set(re.findall(r'section(?:_config)?\((?:PARAMS, )?"(\w+)"', script))
    assert set(sections) == read, f"{stage} reads {sorted(read)} but dvc.yaml lists {sections}"


def test_params_yaml_loads_and_lists_every_tunable_of_every_detector():
    cfg = load_config()
    from dataclasses import fields

    from poisonguard.detect.registry import DETECTORS

    for name, params in cfg.fit_gmm.detectors.items():
        declared = {f.name for f in fields(DETECTORS[name].Params)}
        assert set(params) == declared, f"params.yaml fit_gmm.detectors.{name}: missing {declared - set(params)}"
    assert Path(ROOT / "params.yaml").read_text().count("k_max:") >= 4  # each mixture's K range is a key
