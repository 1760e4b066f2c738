"""`--compile`: extraction with the language model under torch.compile gives the uncompiled features.

The backend here is "aot_eager" (TorchDynamo's graph capture and AOTAutograd, no code generation): inductor
also works on the 2-core CPU machines (gcc is present) but compiling the tiny model took about two minutes
there, too slow for the suite. What could break the capture -- the graph breaks around its attention function,
the recorder seeing every layer -- is the same for both backends.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonguard.extract import extract
from poisonguard.extract.compiled import CPU_WARNING, compiled_language_model, language_model
from tests.extract.conftest import mixed_examples, tiny


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_compiled_extraction_equals_uncompiled(family):
    model, processor = tiny(family)
    examples = mixed_examples()
    ref = extract(model, processor, examples, batch_size=4, show_progress=False)
    torch._dynamo.reset()
    with compiled_language_model(model, backend="aot_eager") as m:
        assert "forward" in vars(language_model(m)), "the language model's forward is the compiled one"
        out = extract(m, processor, examples, batch_size=4, show_progress=False)
    assert "forward" not in vars(language_model(model)), "restored on exit"
    np.testing.assert_allclose(out.alloc, ref.alloc, atol=1e-5)
    np.testing.assert_allclose(out.vis_entropy, ref.vis_entropy, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(out.hidden, ref.hidden, atol=1e-4)


def test_disabled_is_a_no_op_and_inductor_on_cpu_warns():
    model, _ = tiny("llava")
    with compiled_language_model(model, enabled=False):
        assert "forward" not in vars(language_model(model))
    with pytest.warns(UserWarning, match="--compile on the CPU"), compiled_language_model(model):
        pass  # nothing runs: torch.compile is lazy, so no compilation happens here
    assert "forward" not in vars(language_model(model))
    assert "GPU" in CPU_WARNING
