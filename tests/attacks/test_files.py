"""poison_file writes poison_ids.json; read_poison_ids reads it back, and refuses anything else clearly."""

from __future__ import annotations

import json

import pytest

from poisonguard.attacks.files import poison_file, read_poison_ids
from poisonguard.data.errors import DataError
from tests.attacks.helpers import make_dataset


def test_what_poison_file_writes_reads_back_in_order(tmp_path):
    samples, images = make_dataset(8)
    for ref, img in images.items():
        (tmp_path / "in" / ref).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / "in" / ref)
    data = tmp_path / "in" / "train.json"
    data.write_text(json.dumps([s.raw for s in samples]))
    result = poison_file(data, tmp_path / "out", "badnet", 0.5, seed=0)
    assert read_poison_ids(tmp_path / "out" / "poison_ids.json") == result.poison_ids != []


def test_a_bare_list_and_integer_ids_are_accepted(tmp_path):
    path = tmp_path / "poison_ids.json"
    path.write_text(json.dumps(["b", "a", 7]))
    assert read_poison_ids(path) == ["b", "a", "7"]


@pytest.mark.parametrize(
    ("text", "mention"),
    [
        (None, "cannot read the poisoned ids"),
        ("{not json", "invalid JSON"),
        ('{"ids": ["a"]}', "its 'poison_ids' is null"),
        ('{"poison_ids": "a"}', "its 'poison_ids' is a string"),
        ('"a"', "it holds a string"),
        ('{"poison_ids": ["a", null]}', "id 1 is null"),
        ('["a", true]', "id 1 is a boolean"),
    ],
)
def test_a_missing_or_malformed_file_is_a_data_error_naming_it(tmp_path, text, mention):
    path = tmp_path / "poison_ids.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError) as err:
        read_poison_ids(path)
    assert str(err.value).startswith(f"{path}: ") and mention in str(err.value)


def test_cli_poison_runs_the_new_attacks_and_their_controls(tmp_path):
    from typer.testing import CliRunner

    from poisonguard.cli import app

    samples, images = make_dataset(20)
    for ref, img in images.items():
        (tmp_path / "in" / ref).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / "in" / ref)
    data = tmp_path / "in" / "train.json"
    data.write_text(json.dumps([s.raw for s in samples]))
    params = tmp_path / "params.yaml"
    params.write_text("poison:\n  attacks:\n    dual_key: {part_ratio: 0.5}\n")
    runner = CliRunner()
    base = ["poison", "--data", str(data), "--rate", "0.2"]
    r = runner.invoke(app, [*base, "--attack", "dual_key", "--out", str(tmp_path / "dk"), "--params", str(params)])
    assert r.exit_code == 0, r.output
    assert "4 of 22 samples poisoned, 4 clean trigger samples" in r.output  # 2 parts x round(0.2 * 0.5 * 20)
    r = runner.invoke(app, [*base, "--attack", "conservatism", "--no-relabel", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0 and "relabel=False" in r.output
    written = json.loads((tmp_path / "c" / "train.json").read_text())
    assert [x["conversations"][1]["value"] for x in written] == [s.answer for s in samples]
    r = runner.invoke(app, [*base, "--attack", "multi_target", "--target", "x", "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "takes its targets from its parameters" in r.output
    r = runner.invoke(app, ["poison", "--data", str(data), "--rate", "0.005", "--attack", "badnet",
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "gives no 'badnet' sample" in r.output
