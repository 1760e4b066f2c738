"""Give every sample a unique id, so that each has exactly one row in the verdict table.

A sample keeps its own id when it is the first to use it. A missing or unusable id becomes `__index_<i>` (its
position in the file); a repeated id becomes `<id>#dup<n>` for its n-th occurrence. Such samples are
quarantined, because a verdict keyed by an id the customer did not write, or wrote twice, cannot be matched
back reliably. Synthesized ids never collide with any id in the file, including ids that appear later.
"""

from __future__ import annotations

from collections.abc import Sequence

from poisonguard.data.errors import QuarantineReason, ReasonCode

MISSING = object()  # marks a record without an "id" key (distinct from an explicit null)


def assign_ids(
    raw_ids: Sequence[object], *, required: bool = True
) -> list[tuple[str, QuarantineReason | None]]:
    """One `(unique id, reason or None)` per entry of `raw_ids` (the raw "id" values, or `MISSING`).

    With `required=False` (a format where ids are optional and no record has one) every sample gets its
    index id without being quarantined.
    """
    declared = [_declared_id(v) for v in raw_ids]
    taken = {d for d in declared if d is not None}
    first_index: dict[str, int] = {}
    occurrences: dict[str, int] = {}
    out: list[tuple[str, QuarantineReason | None]] = []
    for index, (raw, own) in enumerate(zip(raw_ids, declared, strict=True)):
        if own is not None and own not in first_index:
            first_index[own] = index
            out.append((own, None))
            continue
        if own is not None:
            occurrences[own] = occurrences.get(own, 1) + 1
            new = _fresh(f"{own}#dup{occurrences[own]}", taken)
            reason = QuarantineReason.at(
                ReasonCode.DUPLICATE_ID,
                new,
                "id",
                f"id {own!r} is already used by the sample at index {first_index[own]}; this one "
                f"(index {index}) is reported as {new!r}",
            )
        else:
            new = _fresh(f"__index_{index}", taken)
            if raw is MISSING or raw is None or (isinstance(raw, str) and not raw.strip()):
                code, what = ReasonCode.MISSING_ID, "has no id"
            else:
                code, what = (
                    ReasonCode.INVALID_ID,
                    f"has id {raw!r} of type {type(raw).__name__}, not a string",
                )
            reason = (
                QuarantineReason.at(
                    code, new, "id", f"the sample at index {index} {what}; reported as {new!r}"
                )
                if required
                else None
            )
        taken.add(new)
        out.append((new, reason))
    return out


def _declared_id(value: object) -> str | None:
    """The usable id written in the record: a non-blank string, or an integer (common in exported data)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _fresh(base: str, taken: set[str]) -> str:
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}~{n}"
    return candidate
