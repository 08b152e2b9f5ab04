"""Pinecone's metadata filter language: validation with errors that name the offending
path, and evaluation against one record's metadata (the reference semantics).

Operators: $eq $ne $gt $gte $lt $lte $in $nin $exists $and $or; a bare value means $eq;
a list-valued field matches when any element matches ($eq/$in), and $ne/$nin hold only
when no element matches.
"""

from __future__ import annotations

from typing import Any

COMPARISON = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"}
LOGICAL = {"$and", "$or"}
MAX_DEPTH = 8
MAX_IN_VALUES = 10_000

Filter = dict[str, Any]


class FilterError(ValueError):
    """The filter is malformed; `path` points at the offending part."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool | int | float) and not (
        isinstance(value, float) and value != value  # NaN
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_filter(filter_: Any, path: str = "filter") -> Filter:
    """Return `filter_` if it is well-formed, else raise FilterError naming the bad part."""
    _validate(filter_, path, 0)
    return filter_


def _validate(node: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise FilterError(path, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict):
        raise FilterError(path, "expected an object of field conditions")
    for key, value in node.items():
        here = f"{path}.{key}"
        if key in LOGICAL:
            if not isinstance(value, list) or not value:
                raise FilterError(here, "expected a non-empty list of filters")
            for i, sub in enumerate(value):
                _validate(sub, f"{here}[{i}]", depth + 1)
        elif key.startswith("$"):
            raise FilterError(here, f"unknown operator; use one of {sorted(LOGICAL)} here")
        elif not key:
            raise FilterError(here, "empty field name")
        else:
            _validate_condition(value, here)


def _validate_condition(condition: Any, path: str) -> None:
    if not isinstance(condition, dict):
        if not _is_scalar(condition):
            raise FilterError(path, "expected a string, number or boolean, or an operator object")
        return
    if not condition:
        raise FilterError(path, "empty condition")
    for op, operand in condition.items():
        here = f"{path}.{op}"
        if op not in COMPARISON:
            raise FilterError(here, f"unknown operator; use one of {sorted(COMPARISON)}")
        if op in ("$eq", "$ne"):
            if not _is_scalar(operand):
                raise FilterError(here, "expected a string, number or boolean")
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            if not _is_number(operand):
                raise FilterError(here, "expected a number")
        elif op in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise FilterError(here, "expected a list of values")
            if len(operand) > MAX_IN_VALUES:
                raise FilterError(here, f"at most {MAX_IN_VALUES} values")
            for i, item in enumerate(operand):
                if not _is_scalar(item):
                    raise FilterError(f"{here}[{i}]", "expected a string, number or boolean")
        elif op == "$exists" and not isinstance(operand, bool):
            raise FilterError(here, "expected true or false")


def _equal(a: Any, b: Any) -> bool:
    # Pinecone keeps booleans and numbers apart: true does not equal 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def _compare(value: Any, op: str, operand: Any) -> bool:
    if not _is_number(value):
        return False
    match op:
        case "$gt":
            return value > operand
        case "$gte":
            return value >= operand
        case "$lt":
            return value < operand
        case _:
            return value <= operand


def _condition_holds(value: Any, present: bool, op: str, operand: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    match op:
        case "$exists":
            return present == operand
        case "$eq":
            return present and any(_equal(v, operand) for v in values)
        case "$ne":
            return not present or not any(_equal(v, operand) for v in values)
        case "$in":
            return present and any(_equal(v, o) for v in values for o in operand)
        case "$nin":
            return not present or not any(_equal(v, o) for v in values for o in operand)
        case _:
            return present and not isinstance(value, list) and _compare(value, op, operand)


def matches(filter_: Filter | None, metadata: dict[str, Any]) -> bool:
    """Whether a record with `metadata` passes a validated filter."""
    if not filter_:
        return True
    for key, value in filter_.items():
        if key == "$and":
            if not all(matches(sub, metadata) for sub in value):
                return False
        elif key == "$or":
            if not any(matches(sub, metadata) for sub in value):
                return False
        else:
            condition = value if isinstance(value, dict) else {"$eq": value}
            present = key in metadata
            field_value = metadata.get(key)
            for op, operand in condition.items():
                if not _condition_holds(field_value, present, op, operand):
                    return False
    return True
