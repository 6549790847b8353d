"""Deterministic names for children: the same parent and role always give the same name."""

from __future__ import annotations

import hashlib

MAX_NAME = 63


def child_name(parent: str, role: str, limit: int = MAX_NAME) -> str:
    """`<parent>-<role>`, or a truncated form with a short hash of the full name when it
    would exceed `limit` (DNS labels allow 63 characters)."""
    full = f"{parent}-{role}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    keep = limit - len(digest) - 1
    return f"{full[:keep].rstrip('-')}-{digest}"


def trial_name(experiment: str, index: int) -> str:
    """Trial `index` (1-based) of an Experiment: `iris-t003`."""
    return child_name(experiment, f"t{index:03d}")


def model_version_name(model: str, version: int) -> str:
    return child_name(model, f"v{version}")
