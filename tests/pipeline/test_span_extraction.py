"""The extraction stage's answer-span pass on real tiny checkpoints: an adapter folder (base = adapter off)
gives the merged model's log-probabilities, the base-model control gives zero gain and no flag, and a drop
extracted without the span pass leaves the `span` detector out with its reason."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from poisonguard.detect.span import AnswerSpanDetector, answer_gain
from poisonguard.extract.features import build_features
from poisonguard.extract.span import SPAN_FILE
from poisonguard.pipeline.config import ExtractConfig, GmmConfig
from poisonguard.pipeline.extraction import extract_models, validate
from poisonguard.pipeline.gmm import usable_detectors
from poisonguard.pipeline.layout import Layout
from poisonguard.runtime import Runtime
from tests.pipeline.test_screen_runtime import adapter_dirs, data  # noqa: F401 - fixtures

CPU = Runtime(torch.device("cpu"), torch.float32)
CFG = ExtractConfig(batch_size=4, shard_size=8, span_max_tokens=16)


def _extract(data_path, base, finetuned, out):
    layout = Layout.screen(out)
    checked = validate(data_path, base, layout, log=lambda m: None)
    extract_models(checked, base, finetuned, layout, CFG, runtime=CPU, show_progress=False, log=lambda m: None)
    return build_features(layout.extract, strata_k=2)


def test_adapter_span_equals_the_merged_models_and_base_is_adapter_off(data, adapter_dirs, tmp_path):  # noqa: F811
    base, adapter, merged = adapter_dirs
    via_adapter = _extract(data, base, adapter, tmp_path / "a")
    via_merged = _extract(data, base, merged, tmp_path / "m")
    assert (tmp_path / "a" / "extract" / "finetuned" / SPAN_FILE).exists()
    assert via_adapter.answer_logp.shape == (via_adapter.n, 16)
    np.testing.assert_allclose(via_adapter.answer_logp, via_merged.answer_logp, atol=1e-4)
    np.testing.assert_allclose(via_adapter.answer_logp_base, via_merged.answer_logp_base, atol=1e-5)
    gain = answer_gain(via_adapter.answer_logp, via_adapter.answer_logp_base)["max"]
    assert np.abs(gain).max() > 1e-3  # the random adapter does change the answers' likelihoods


def test_base_model_control_gives_zero_gain_and_no_flag(data, adapter_dirs, tmp_path):  # noqa: F811
    base, _, _ = adapter_dirs
    fs = _extract(data, base, base, tmp_path / "c")
    np.testing.assert_array_equal(fs.answer_logp, fs.answer_logp_base)
    res = AnswerSpanDetector().detect(fs)
    assert res.flagged.sum() == 0 and "no fine-tuning gain" in res.report["reason"]


def test_span_detector_is_left_out_without_span_features(data, adapter_dirs, tmp_path):  # noqa: F811
    base, _, _ = adapter_dirs
    fs = _extract(data, base, base, tmp_path / "c")
    chosen, left_out = usable_detectors(GmmConfig(detectors={"shift": {}, "span": {}}),
                                        replace(fs, answer_logp=None, answer_logp_base=None))
    assert list(chosen) == ["shift"] and "answer-span" in left_out["span"]
