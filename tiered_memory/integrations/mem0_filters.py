"""mem0's ``filters=`` language, translated onto the engine's ``where=`` filters.

mem0's ``search`` and ``get_all`` take the scope ids and the metadata conditions in one dict:
``{"user_id": "u1", "category": "food", "rating": {"gte": 4}, "OR": [...], "NOT": [...]}``.
The operators eq ne in nin gt gte lt lte become the engine's ``$`` operators (the ``$`` spellings
are accepted too), ``AND`` / ``OR`` become ``$and`` / ``$or`` and the wildcard ``"*"`` becomes
``$exists: True``: those run inside the engine's search, in every tier. Three have no engine
operator: ``contains``, ``icontains`` and ``NOT``. A top-level clause that uses one is evaluated
by the facade over the scope's records and reaches the search as ``only_ids``: exact, but it reads
every record of the scope once per call, so keep those for small scopes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from tiered_memory.errors import InvalidFilterError, short_repr
from tiered_memory.search.filters import MAX_NESTING, compile_where

Predicate = Callable[[Mapping[str, Any]], bool]

SCOPE_KEYS = ("user_id", "agent_id", "run_id")
WILDCARD = "*"
_ENGINE_OPERATORS = {"eq", "ne", "in", "nin", "gt", "gte", "lt", "lte"}
_LOCAL_OPERATORS = {"contains", "icontains"}
_LOGIC = {"AND": "$and", "$and": "$and", "OR": "$or", "$or": "$or"}
_NEGATIONS = ("NOT", "$not")
_MISSING = object()


@dataclass(frozen=True)
class Translated:
    """A mem0 filter split three ways: scope ids, what the engine evaluates, what the facade does."""

    scope: dict[str, Any]  # raw top-level user_id / agent_id / run_id values, checked by the facade
    where: dict[str, Any] | None  # for TieredMemory.search(where=)
    local: Predicate | None  # top-level clauses with contains / icontains / NOT

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """The whole metadata condition (engine part and local part), for listings."""
        if self.where is not None and not _where_predicate(self.where)(metadata):
            return False
        return self.local is None or self.local(metadata)


def _where_predicate(where: dict[str, Any]) -> Predicate:
    return cast(Predicate, compile_where(where))  # never None: `where` is a non-empty dict here


def translate(filters: Mapping[str, Any] | None) -> Translated:
    """Validate a mem0 filter dict and split it; raises InvalidFilterError naming the bad part."""
    if filters is None:
        return Translated({}, None, None)
    if not isinstance(filters, Mapping):
        raise InvalidFilterError(f"filters must be a dict such as {{'user_id': 'u1', 'topic': 'food'}}, "
                                 f"got {short_repr(filters)}")
    scope = {key: filters[key] for key in SCOPE_KEYS if key in filters}
    engine_parts: list[dict[str, Any]] = []
    local_parts: list[Predicate] = []
    for key, spec in filters.items():
        if key in SCOPE_KEYS:
            continue
        engine, predicate = _entry(key, spec, 0)
        if engine is not None:
            engine_parts.append(engine)
        else:
            local_parts.append(predicate)
    where = None
    if engine_parts:
        where = engine_parts[0] if len(engine_parts) == 1 else {"$and": engine_parts}
        compile_where(where)  # the engine's own validation, now rather than at the first record
    local = None
    if local_parts:
        local = local_parts[0] if len(local_parts) == 1 else (
            lambda metadata: all(part(metadata) for part in local_parts))
    return Translated(scope, where, local)


def _node(filters: object, depth: int) -> tuple[dict[str, Any] | None, Predicate]:
    """A nested filter dict: its engine form (None if any part needs the facade) and a predicate."""
    if depth > MAX_NESTING:
        raise InvalidFilterError(f"filters are nested more than {MAX_NESTING} AND/OR/NOT levels deep; flatten them")
    if not isinstance(filters, Mapping) or not filters:
        raise InvalidFilterError("each condition inside AND/OR/NOT must be a non-empty dict, "
                                 f"got {short_repr(filters)}")
    entries = [_entry(key, spec, depth) for key, spec in filters.items()]
    predicates = [predicate for _, predicate in entries]
    engine = None
    if all(form is not None for form, _ in entries):
        forms = [form for form, _ in entries]
        engine = forms[0] if len(forms) == 1 else {"$and": forms}
    return engine, (predicates[0] if len(predicates) == 1 else
                    lambda metadata: all(predicate(metadata) for predicate in predicates))


def _conditions(key: str, spec: object, depth: int) -> list[tuple[dict[str, Any] | None, Predicate]]:
    # mem0 takes a list for NOT too; a single dict is accepted as a list of one.
    items = [spec] if key in _NEGATIONS and isinstance(spec, Mapping) else spec
    if not isinstance(items, list) or not items:
        raise InvalidFilterError(f"{key} takes a non-empty list of conditions, got {short_repr(spec)}")
    return [_node(item, depth + 1) for item in items]


def _entry(key: object, spec: Any, depth: int) -> tuple[dict[str, Any] | None, Predicate]:
    if isinstance(key, str) and key in _LOGIC:
        children = _conditions(key, spec, depth)
        combine = all if _LOGIC[key] == "$and" else any
        preds = [predicate for _, predicate in children]
        predicate: Predicate = lambda metadata: combine(p(metadata) for p in preds)  # noqa: E731
        if all(form is not None for form, _ in children):
            return {_LOGIC[key]: [form for form, _ in children]}, predicate
        return None, predicate
    if isinstance(key, str) and key in _NEGATIONS:
        preds = [predicate for _, predicate in _conditions(key, spec, depth)]
        # mem0's NOT [a, b]: none of the conditions holds. The engine has no $not: evaluated here.
        return None, lambda metadata: not any(p(metadata) for p in preds)
    if key in SCOPE_KEYS:
        raise InvalidFilterError(f"{key} is a scope id: give it at the top level of filters (or as {key}=), "
                                 "not inside AND/OR/NOT")
    if not isinstance(key, str) or not key or key.startswith("$"):
        raise InvalidFilterError(f"unknown filter operator or bad field name {short_repr(key)}; fields are the "
                                 "str keys of a memory's metadata, logic is AND / OR / NOT")
    if isinstance(spec, str) and spec == WILDCARD:
        form = {key: {"$exists": True}}
        return form, _where_predicate(form)
    if isinstance(spec, Mapping):  # as in mem0, a dict holds operators ({"eq": {...}} to match a dict)
        if not spec:
            raise InvalidFilterError(f"field {short_repr(key)} has an empty operator dict; give e.g. {{'gte': 4}}")
        return _field_operators(key, spec)
    form = {key: {"$eq": spec}}
    return form, _where_predicate(form)


def _is_operator(op: object) -> bool:
    return isinstance(op, str) and (op.removeprefix("$") in _ENGINE_OPERATORS or op in _LOCAL_OPERATORS)


def _field_operators(key: str, spec: Mapping[Any, Any]) -> tuple[dict[str, Any] | None, Predicate]:
    engine_ops: dict[str, Any] = {}
    local: list[Predicate] = []
    for op, operand in spec.items():
        if not _is_operator(op):
            raise InvalidFilterError(f"unknown operator {short_repr(op)} on field {short_repr(key)}; use one of "
                                     f"{sorted(_ENGINE_OPERATORS | _LOCAL_OPERATORS)}")
        if op in _LOCAL_OPERATORS:
            local.append(_contains(key, op, operand))
        else:
            engine_ops["$" + op.removeprefix("$")] = operand
    engine_form = {key: engine_ops} if engine_ops else None
    predicates = ([_where_predicate(engine_form)] if engine_form else []) + local
    predicate = predicates[0] if len(predicates) == 1 else (
        lambda metadata: all(p(metadata) for p in predicates))
    return (engine_form if not local else None), predicate


def _contains(key: str, op: str, operand: object) -> Predicate:
    if not isinstance(operand, str) or not operand:
        raise InvalidFilterError(f"{op} on field {short_repr(key)} takes a non-empty str, got {short_repr(operand)}")
    if op == "icontains":
        folded = operand.casefold()
        return lambda metadata: isinstance(value := metadata.get(key, _MISSING), str) and folded in value.casefold()
    return lambda metadata: isinstance(value := metadata.get(key, _MISSING), str) and operand in value
