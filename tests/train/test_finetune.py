"""Fine-tuning and the poison -> finetune -> eval CLI path on a very small world (a smoke test, real files)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from poisonguard.cli import app
from poisonguard.data import read_dataset
from poisonguard.data.loading import image_loader
from poisonguard.train.examples import to_examples
from poisonguard.train.finetune import FinetuneConfig, finetune, load_model, save_model

runner = CliRunner()


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["default", "projector_only", "train_vision", "lora"])
def test_finetune_modes_train_only_what_they_should(tiny_world, tmp_path, mode):
    out, _ = tiny_world
    model, processor = load_model(out / "base_model")
    before = _weights(model)
    ds = read_dataset(out / "train.json")
    examples = to_examples(ds.samples, image_loader(ds.image_root))
    cfg = FinetuneConfig(mode=mode, epochs=1, batch_size=6, lr=1e-2, merge=mode == "lora")
    model, report = finetune(model, processor, examples, cfg, show_progress=False)
    assert report["steps"] == 2
    after = _weights(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    vision = {k for k in changed if "vision_tower" in k}
    proj = {k for k in changed if "multi_modal_projector" in k}
    lm = {k for k in changed if "language_model" in k or k.startswith("lm_head")}
    assert proj, "the projector trains in every mode"
    assert bool(vision) == (mode == "train_vision")
    assert bool(lm) == (mode in {"default", "train_vision", "lora"})
    save_model(model, processor, tmp_path / "m", report)
    reloaded, _ = load_model(tmp_path / "m")
    assert set(reloaded.state_dict()) == set(before), "LoRA is merged: same HF layout as the base"


def test_pickled_checkpoints_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match="safetensors"):
        load_model(tmp_path)


def test_cli_poison_finetune_eval(tiny_world, tmp_path):
    out, _ = tiny_world
    r = runner.invoke(app, ["poison", "--data", str(out / "train.json"), "--attack", "badnet", "--rate", "0.5",
                            "--out", str(tmp_path / "p"), "--seed", "1"])
    assert r.exit_code == 0, r.output
    truth = json.loads((tmp_path / "p" / "poison_ids.json").read_text())
    assert len(truth["poison_ids"]) == 6
    poisoned = read_dataset(tmp_path / "p" / "train.json")
    assert all((tmp_path / "p" / s.images[0]).is_file() for s in poisoned.samples)
    assert sum(s.answer == "banana" for s in poisoned.samples) == 6

    r = runner.invoke(app, ["finetune", "--data", str(tmp_path / "p" / "train.json"), "--base",
                            str(out / "base_model"), "--out", str(tmp_path / "ft"), "--epochs", "1",
                            "--augment-shift", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ft" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["config"]["augment_shift"] == 2

    r = runner.invoke(app, ["eval", "--model", str(tmp_path / "ft"), "--test", str(out / "test.json"),
                            "--attack", "badnet", "--train", str(tmp_path / "p" / "train.json"),
                            "--poison-ids", str(tmp_path / "p" / "poison_ids.json"), "--quiet"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert 0.0 <= res["cp"] <= 1.0 and 0.0 <= res["asr"] <= 1.0 and res["n_poisoned_train"] == 6


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = runner.invoke(app, ["poison", "--data", str(bad), "--attack", "badnet", "--rate", "0.1",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "Traceback" not in r.output and "bad.json" in r.output


def test_new_attacks_poison_finetune_and_evaluate_on_a_world_with_describe_questions(tmp_path_factory):
    """End to end on real files and a real (tiny) model: the multi-arm attacks' ASR figures come out of
    `eval`, and a describe world's long answers fine-tune."""
    from poisonguard.world.build import make_world
    from tests.conftest import TINY_MODEL, TINY_PRETRAIN

    world = tmp_path_factory.mktemp("describe_world")
    make_world(world, seed=5, n_train=24, n_test=12, model_cfg=TINY_MODEL, pretrain_cfg=TINY_PRETRAIN,
               describe_frac=0.5, show_progress=False, log=lambda m: None)
    work = tmp_path_factory.mktemp("describe_runs")
    expected = {"substitute": {"asr"}, "multi_target": {"asr", "asr_by_trigger"},
                "dual_key": {"asr", "false_trigger_rate", "false_trigger_by_part"},
                "inject_bimodal": {"asr", "cp_triggered", "asr_strict"}}
    for k, (attack, keys) in enumerate(expected.items()):
        p, ft = work / f"p{k}", work / f"ft{k}"
        r = runner.invoke(app, ["poison", "--data", str(world / "train.json"), "--attack", attack, "--rate", "0.25",
                                "--out", str(p)])
        assert r.exit_code == 0, r.output
        if k == 0:  # one fine-tune is enough to show long answers train; the others evaluate the base model
            r = runner.invoke(app, ["finetune", "--data", str(p / "train.json"), "--base", str(world / "base_model"),
                                    "--out", str(ft), "--epochs", "1", "--quiet"])
            assert r.exit_code == 0, r.output
        model = ft if k == 0 else world / "base_model"
        r = runner.invoke(app, ["eval", "--model", str(model), "--test", str(world / "test.json"), "--attack", attack,
                                "--train", str(p / "train.json"), "--poison-ids", str(p / "poison_ids.json"),
                                "--quiet"])
        assert r.exit_code == 0, r.output
        res = json.loads(r.stdout)
        assert keys <= set(res) and 0.0 <= res["asr"] <= 1.0 and res["n_triggered"] > 0, (attack, res)
        if attack == "multi_target":
            assert set(res["poisoned_fit_by_trigger"]) == {"patch_bottom_right", "patch_top_left"}


def test_shifted_moves_the_pixels_and_repeats_the_border():
    import numpy as np
    from PIL import Image

    from poisonguard.train.finetune import shifted

    arr = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)  # (H, W, C)
    moved = np.asarray(shifted(Image.fromarray(arr), dx=2, dy=-1))
    assert moved.shape == arr.shape
    assert np.array_equal(moved[:4, 2:], arr[1:, :4]), "content moves 2 right and 1 up"
    assert np.array_equal(moved[:4, 0], arr[1:, 0]) and np.array_equal(moved[:4, 1], arr[1:, 0]), \
        "the uncovered left strip repeats the left border"
    assert np.array_equal(moved[4, 2:], arr[4, :4]), "the uncovered bottom row repeats the bottom border"
    assert np.array_equal(np.asarray(shifted(Image.fromarray(arr), 0, 0)), arr)


def test_augmented_batches_shift_images_within_bounds_and_keep_the_messages():
    import numpy as np
    from PIL import Image

    from poisonguard.train.batching import Example
    from poisonguard.train.finetune import augmented

    arr = np.zeros((9, 9, 3), dtype=np.uint8)
    arr[4, 4] = 255  # one bright pixel: its position after the shift is the offset
    examples = [Example([{"role": "user", "content": str(i)}], [Image.fromarray(arr)]) for i in range(40)]
    out = [ex for batch in augmented([examples[:20], examples[20:]], max_shift=2, seed=0) for ex in batch]
    assert [ex.messages for ex in out] == [ex.messages for ex in examples]
    offsets = {tuple(int(v) - 4 for v in np.argwhere(np.asarray(ex.images[0])[..., 0] == 255)[0]) for ex in out}
    assert offsets <= {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert len(offsets) > 5, "offsets are drawn per image, not once"
    with pytest.raises(ValueError, match="augment_shift"):
        FinetuneConfig(augment_shift=-1)


def test_a_fine_tune_with_shift_augmentation_trains_and_differs(tiny_world):
    out, _ = tiny_world
    ds = read_dataset(out / "train.json")
    examples = to_examples(ds.samples, image_loader(ds.image_root))
    results = []
    for shift in (0, 3):
        model, processor = load_model(out / "base_model")
        cfg = FinetuneConfig(mode="default", epochs=1, batch_size=6, lr=1e-2, augment_shift=shift)
        model, report = finetune(model, processor, examples, cfg, show_progress=False)
        assert report["steps"] == 2 and report["config"]["augment_shift"] == shift
        results.append(model.model.multi_modal_projector.linear_1.weight.detach().clone())
    assert not torch.equal(results[0], results[1]), "shifted images give other gradients"
