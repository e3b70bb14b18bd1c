"""Metadata filters (``where=``): validated once, compiled to a plain predicate.

Syntax, MongoDB-style: ``{"field": value}`` (equality), ``{"field": {"$gte": 0.5}}``, and
``{"$and": [...]}`` / ``{"$or": [...]}``. Operators: $eq $ne $in $nin $gt $gte $lt $lte $exists.
A field that is missing matches only $ne, $nin and ``$exists: False``. Order comparisons between
values of different types (a str against a number) are false, never an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tiered_memory.errors import InvalidFilterError, short_repr

Predicate = Callable[[Mapping[str, Any]], bool]

_MISSING = object()


def _comparable(a: object, b: object) -> bool:
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return True
    return type(a) is type(b) and isinstance(a, (str, bytes))


def _order(test: Callable[[Any, Any], bool]) -> Callable[[object, object], bool]:
    def compare(value: object, operand: object) -> bool:
        return value is not _MISSING and _comparable(value, operand) and test(value, operand)

    return compare


def _equal(value: object, operand: object) -> bool:
    # 1 == True in Python; a filter on a bool field must not match the number 1.
    return value is not _MISSING and isinstance(value, bool) == isinstance(operand, bool) and value == operand


def _member(value: object, operand: list[object]) -> bool:
    return any(_equal(value, item) for item in operand)


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": _equal,
    "$ne": lambda value, operand: not _equal(value, operand),
    "$in": _member,
    "$nin": lambda value, operand: not _member(value, operand),
    "$gt": _order(lambda a, b: a > b),
    "$gte": _order(lambda a, b: a >= b),
    "$lt": _order(lambda a, b: a < b),
    "$lte": _order(lambda a, b: a <= b),
    "$exists": lambda value, operand: (value is not _MISSING) == operand,
}


MAX_NESTING = 32  # $and/$or levels: far beyond any real filter, far below Python's recursion limit


def compile_where(where: Mapping[str, Any] | None, depth: int = 0) -> Predicate | None:
    """Turn a ``where`` mapping into a predicate on metadata; None means no filter."""
    if where is None:
        return None
    if depth > MAX_NESTING:
        raise InvalidFilterError(f"where is nested more than {MAX_NESTING} $and/$or levels deep; flatten it")
    if not isinstance(where, Mapping) or not where:
        raise InvalidFilterError("where must be a non-empty mapping such as {'project': 'rag'}, "
                                 f"got {short_repr(where)}")
    clauses = [_compile_clause(key, spec, depth) for key, spec in where.items()]
    if len(clauses) == 1:
        return clauses[0]
    return lambda metadata: all(clause(metadata) for clause in clauses)


def _compile_clause(key: object, spec: Any, depth: int) -> Predicate:
    if key in ("$and", "$or"):
        if not isinstance(spec, list) or not spec:
            raise InvalidFilterError(f"{key} takes a non-empty list of filters, got {short_repr(spec)}")
        parts = [compile_where(part, depth + 1) for part in spec]
        combine = all if key == "$and" else any
        return lambda metadata: combine(part(metadata) for part in parts)  # type: ignore[misc]
    if not isinstance(key, str) or key.startswith("$"):
        raise InvalidFilterError(f"unknown filter operator or bad field name {short_repr(key)}; "
                                 "fields are str keys of metadata")
    if isinstance(spec, Mapping) and any(isinstance(op, str) and op.startswith("$") for op in spec):
        tests = [_compile_operator(key, op, operand) for op, operand in spec.items()]
    else:
        tests = [_compile_operator(key, "$eq", spec)]

    def clause(metadata: Mapping[str, Any]) -> bool:
        value = metadata.get(key, _MISSING)
        return all(test(value, operand) for test, operand in tests)

    return clause


def _compile_operator(key: str, op: object, operand: Any) -> tuple[Callable[[Any, Any], bool], Any]:
    test = _OPERATORS.get(op) if isinstance(op, str) else None
    if test is None:
        raise InvalidFilterError(f"unknown operator {short_repr(op)} on field {short_repr(key)}; "
                                 f"use one of {sorted(_OPERATORS)}")
    if op in ("$in", "$nin"):
        if not isinstance(operand, (list, tuple, set, frozenset)):
            raise InvalidFilterError(f"{op} on field {short_repr(key)} takes a list, got {short_repr(operand)}")
        operand = list(operand)
    elif op == "$exists" and not isinstance(operand, bool):
        raise InvalidFilterError(f"$exists on field {short_repr(key)} takes True or False, got {short_repr(operand)}")
    elif op in ("$gt", "$gte", "$lt", "$lte") and not isinstance(operand, (int, float, str, bytes)):
        raise InvalidFilterError(f"{op} on field {short_repr(key)} takes a number or a str, got {short_repr(operand)}")
    return test, operand
