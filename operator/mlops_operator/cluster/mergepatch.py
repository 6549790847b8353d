"""JSON merge patch (RFC 7386), the patch format the port speaks, and its inverse.

`merge(target, patch)` never mutates its inputs: untouched subtrees of `target` are shared
with the result (copy-on-write), which is what lets the in-memory cluster patch an object
without copying all of it. `diff(old, new)` computes the patch that turns `old` into `new`
(keys that disappear become `None`), so a caller that owns a whole subtree, such as a
reconciler's status, can write it with one merge patch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge(target: Any, patch: Any) -> Any:
    """`target` with `patch` merged in: dicts merge key by key, `None` removes a key, every
    other value (lists included) replaces what was there."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            result[key] = merge(result.get(key), value)
        else:
            result[key] = value
    return result


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest merge patch p with `merge(old, p) == new` (empty when they are equal).
    `new` must not hold `None` values: a merge patch cannot write a null."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if before is value or (key in old and before == value):
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = diff(before, value)
        else:
            patch[key] = value
    return patch


def changes(target: Any, patch: Any) -> bool:
    """Whether merging `patch` into `target` would change it (without building the result)."""
    if not isinstance(patch, Mapping):
        return target != patch
    if not isinstance(target, Mapping):
        return True
    for key, value in patch.items():
        if value is None:
            if key in target:
                return True
        elif key not in target or changes(target[key], value):
            return True
    return False
