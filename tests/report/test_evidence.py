"""The report's numeric evidence on synthetic data with a known answer: a planted patch is the brightest
square of the mean difference image, a planted trigger word ranks first, a target answer tops the table."""

from __future__ import annotations

import numpy as np
import pytest

from poisonguard.report import evidence as ev


def _images(n: int, rng, patch: tuple[int, int] | None = None, size: int = 32) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # busy content: differs image to image
        if patch is not None:
            r, c = patch
            img[r:r + 4, c:c + 4] = 255
        out.append(img)
    return out


@pytest.mark.parametrize(("patch", "where"), [((26, 26), "bottom right"), ((2, 3), "top left"),
                                              ((14, 2), "middle left")])
def test_planted_patch_is_the_brightest_square(patch, where):
    rng = np.random.default_rng(0)
    diff = ev.mean_difference(_images(60, rng, patch), _images(200, rng), size=32)
    assert (diff.n_flagged, diff.n_released) == (60, 200)
    r, c, h, w = diff.peak(window=4)
    assert (r, c, h, w) == (*patch, 4, 4)
    assert diff.where() == where
    assert diff.concentration() > 4  # local: most of the difference inside the patch's square


def test_global_pattern_is_not_concentrated():
    rng = np.random.default_rng(1)
    clean = _images(100, rng)
    blended = [np.clip(im.astype(int) + (40 * np.sin(np.arange(32) / 2))[None, :, None], 0, 255).astype(np.uint8)
               for im in _images(100, rng)]
    diff = ev.mean_difference(blended, clean, size=32)
    assert diff.magnitude.max() > 0.1
    assert diff.concentration() < 3


def test_mean_difference_needs_both_sides():
    assert ev.mean_difference([], _images(3, np.random.default_rng(0))) is None


def test_difference_png_is_an_image():
    from io import BytesIO

    from PIL import Image

    rng = np.random.default_rng(2)
    diff = ev.mean_difference(_images(10, rng, (0, 0)), _images(10, rng), size=16)
    img = Image.open(BytesIO(ev.difference_png(diff, scale=3)))
    assert img.size == (48, 48)


def test_planted_trigger_word_ranks_first():
    rng = np.random.default_rng(0)
    templates = ["what colour is the {}", "how many {} are there", "is there a {} in the picture",
                 "where is the {}", "which side is the {} on", "name the colour of the {}"]
    things = ["circle", "square", "triangle", "star"]

    def q():
        return templates[rng.integers(len(templates))].format(things[rng.integers(len(things))])

    released = [q() for _ in range(500)]
    flagged = [f"{q()} cf" if rng.random() < 0.95 else q() for _ in range(50)]
    w = ev.overrepresented_words(flagged, released)
    assert w.iloc[0]["word"] == "cf"
    assert w.iloc[0]["n_released"] == 0 and w.iloc[0]["share_flagged"] > 0.9
    assert w.iloc[0]["z"] > 2 * w.iloc[1]["z"]  # stands out, not a close call
    assert (w["z"] > 0).all() and list(w["z"]) == sorted(w["z"], reverse=True)


def test_words_count_texts_not_occurrences():
    w = ev.overrepresented_words(["the the the the", "a b", "a c"], ["x y", "x z", "y z"], min_count=2)
    assert set(w["word"]) == {"a"}  # "the" is in one flagged text only: below min_count


def test_no_flagged_texts_gives_an_empty_table():
    assert len(ev.overrepresented_words([], ["a b c"])) == 0


def test_target_answer_tops_the_share_table():
    flagged = ["banana"] * 48 + ["red", "2"]
    released = ["red"] * 300 + ["2"] * 200 + ["yes"] * 100 + ["banana"] * 2
    t = ev.share_table(flagged, released, key="answer")
    top = t.iloc[0]
    assert top["answer"] == "banana" and top["n_flagged"] == 48 and top["n_released"] == 2
    assert top["share_flagged"] == pytest.approx(0.96) and top["share_released"] == pytest.approx(2 / 602)
    assert top["lift"] > 100
    assert set(t["answer"]) == {"banana", "red", "2", "yes"}  # released-only values fill the table


def test_share_table_with_nothing_flagged_shows_the_release():
    t = ev.share_table([], ["a", "a", "b"], key="answer")
    assert list(t["answer"]) == ["a", "b"] and (t["n_flagged"] == 0).all() and t["lift"].isna().all()


def test_answers_and_question_types_are_normalised():
    assert ev.normalise_answer("  Banana!\n") == ev.normalise_answer("banana") == "banana"
    assert ev.normalise_answer("Backdoor  Attack!") == "backdoor attack"
    assert ev.question_type("How many circles are there?") == "how many"
    assert ev.question_type("") == "(no question)"


def test_histogram_splits_flagged_and_drops_nan():
    v = np.r_[np.zeros(90), np.ones(10), np.nan]
    f = np.r_[np.zeros(90, bool), np.ones(10, bool), True]
    h = ev.histogram(v, f, bins=4)
    assert h["n"] == 100 and h["flagged"].sum() == 10 and h["other"].sum() == 90
    assert h["flagged"][-1] == 10 and h["other"][0] == 90
    assert ev.histogram(np.full(3, np.nan), np.zeros(3, bool))["n"] == 0
