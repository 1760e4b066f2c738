"""Unique ids: first occurrences keep theirs, the rest get fresh ones and a quarantine reason."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from poisonguard.data.errors import ReasonCode
from poisonguard.data.ids import MISSING, assign_ids


def test_missing_duplicate_and_invalid_ids():
    raw = ["a", MISSING, "a", None, "", "  ", 7, "7", [1], True, "a"]
    out = assign_ids(raw)
    ids = [i for i, _ in out]
    codes = [r.code if r else None for _, r in out]
    assert ids == [
        "a",
        "__index_1",
        "a#dup2",
        "__index_3",
        "__index_4",
        "__index_5",
        "7",
        "7#dup2",
        "__index_8",
        "__index_9",
        "a#dup3",
    ]
    assert codes == [
        None,
        "missing_id",
        "duplicate_id",
        "missing_id",
        "missing_id",
        "missing_id",
        None,
        "duplicate_id",
        "invalid_id",
        "invalid_id",
        "duplicate_id",
    ]
    assert "index 0" in out[2][1].message and "'a'" in out[2][1].message


def test_synthesized_ids_avoid_ids_written_later_in_the_file():
    out = assign_ids([MISSING, "__index_0", "b", "b", "b#dup2"])
    assert [i for i, _ in out] == ["__index_0~2", "__index_0", "b", "b#dup2~2", "b#dup2"]


def test_optional_ids_give_index_ids_without_quarantine():
    assert assign_ids([MISSING, MISSING], required=False) == [("__index_0", None), ("__index_1", None)]


@given(
    st.lists(
        st.one_of(
            st.just(MISSING),
            st.none(),
            st.integers(0, 3),
            st.sampled_from(["a", "b", "a#dup2", "__index_1", ""]),
        ),
        max_size=12,
    )
)
def test_ids_are_unique_and_only_first_occurrences_pass(raw):
    out = assign_ids(raw)
    ids = [i for i, _ in out]
    assert len(set(ids)) == len(raw)
    seen: set[str] = set()
    for value, (new, reason) in zip(raw, out, strict=True):
        declared = str(value) if isinstance(value, int) or (isinstance(value, str) and value) else None
        if declared is not None and declared not in seen:
            assert (new, reason) == (declared, None)
            seen.add(declared)
        else:
            assert reason is not None and reason.code in {ReasonCode.MISSING_ID, ReasonCode.DUPLICATE_ID}
            assert repr(new) in reason.message
