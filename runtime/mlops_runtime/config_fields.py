"""Reading the optional sections of the training config (`validation.data`,
`validation.importance`, ...): one way to read a section, a flag and a bounded number, with
errors that name the field as the config spells it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import UserError


def invalid(where: str, problem: str) -> UserError:
    return UserError("InvalidConfig", f"config field {where}: {problem}")


def section(doc: Any, where: str) -> dict[str, Any]:
    """An optional object; absent is empty."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise invalid(where, "must be an object")
    return doc


def flag(doc: Mapping[str, Any], key: str, where: str, default: bool = True) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise invalid(f"{where}.{key}", "must be true or false")
    return value


def number(doc: Mapping[str, Any], key: str, where: str, default: float, low: float, high: float,
           integer: bool = False) -> Any:
    value = doc.get(key, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise invalid(f"{where}.{key}", f"must be {'an integer' if integer else 'a number'} from {low:g} to "
                      f"{high:g}, got {value!r}")
    return value if integer else float(value)
