"""The typed config of the processor and batching options: params.yaml's defaults keep today's behaviour,
bad values fail at load with the key named, and the runtime carries the image options to every pass."""

from __future__ import annotations

import pytest

from poisonguard.pipeline.config import AuditConfig, ExtractConfig, load_config, override


def test_params_yaml_defaults_keep_fixed_batches_inline_preprocessing_and_untouched_images():
    cfg = load_config()
    assert (cfg.runtime.max_pixels, cfg.runtime.min_pixels, cfg.runtime.pad_to_square) == (None, None, False)
    assert (cfg.extract_attention.max_batch_tokens, cfg.extract_attention.num_workers) == (None, 0)
    assert cfg.audit_projector.max_batch_tokens is None
    runtime = override(cfg, runtime={"device": "cpu", "max_pixels": 1024, "pad_to_square": True}).runtime.resolve()
    assert (runtime.max_pixels, runtime.min_pixels, runtime.pad_to_square) == (1024, None, True)


@pytest.mark.parametrize(("cls", "values", "message"), [
    (ExtractConfig, {"max_batch_tokens": 0}, "max_batch_tokens must be a positive integer"),
    (ExtractConfig, {"num_workers": -1}, "num_workers must be a non-negative integer"),
    (ExtractConfig, {"num_workers": True}, "num_workers must be a non-negative integer"),
    (AuditConfig, {"max_batch_tokens": 2.5}, "max_batch_tokens must be a positive integer"),
])
def test_bad_batching_values_are_refused_with_the_key(cls, values, message):
    with pytest.raises(ValueError, match=message):
        cls(**values)


def test_bad_pixel_bounds_fail_when_the_runtime_is_resolved():
    cfg = override(load_config(), runtime={"device": "cpu", "max_pixels": 100, "min_pixels": 400})
    with pytest.raises(ValueError, match="--min-pixels 400 is above --max-pixels 100"):
        cfg.runtime.resolve()
