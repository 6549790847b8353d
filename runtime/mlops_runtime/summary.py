"""The run's one-line JSON summary: the kubelet copies the termination-message file into the
Pod's status (at most 4096 bytes), so the operator learns the result without reading S3.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_BYTES = 4096
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_ENV = "MLOPS_TERMINATION_LOG"


def encode(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, separators=(",", ":"), allow_nan=False, default=str)


def fit_to_limit(summary: dict[str, Any], limit: int = MAX_BYTES) -> str:
    """Compact JSON under `limit` bytes: shorten the message first, then the evidence that
    has its full copy in S3 (the least populous slice values, then the last top features),
    then drop metrics that are not needed to judge the run (cross-validation spreads, then
    the rest)."""
    text = encode(summary)
    if len(text.encode()) < limit:
        return text
    summary = dict(summary)
    if isinstance(summary.get("message"), str):
        excess = len(text.encode()) - limit + 16
        summary["message"] = summary["message"][: max(80, len(summary["message"]) - excess)] + "..."
        text = encode(summary)
    if len(text.encode()) >= limit:
        summary, text = _shorten_evidence(summary, limit)
    metrics = dict(summary.get("metrics") or {})
    for name in sorted(metrics, key=lambda n: (not n.endswith("_std"), not n.startswith("cv_"), n)):
        if len(text.encode()) < limit:
            break
        metrics.pop(name)
        summary["metrics"] = metrics
        summary["metricsTruncated"] = True
        text = encode(summary)
    return text


def termination_log_path(flag: str | None, env: Mapping[str, str] = os.environ) -> str:
    return flag or env.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG


def write_termination_log(path: str, line: str) -> str | None:
    """Write the summary; returns a warning instead of failing when the path is not writable
    (outside a Pod, /dev/termination-log usually does not exist)."""
    try:
        Path(path).write_text(line)
    except OSError as error:
        return f"could not write the termination message to {path}: {error.strerror or error}"
    return None


def _shorten_evidence(summary: dict[str, Any], limit: int) -> tuple[dict[str, Any], str]:
    """Drop the last (least populous) value of the slice with the most values, down to two
    per slice (slices.json keeps them all; the count goes into `truncated`), then top
    features down to three."""
    slices = [dict(entry, values=list(entry.get("values") or ())) for entry in summary.get("slices") or ()]
    top = list(summary.get("topFeatures") or ())
    summary = {**summary, **({"slices": slices} if slices else {}), **({"topFeatures": top} if top else {})}
    text = encode(summary)
    while len(text.encode()) >= limit:
        widest = max(slices, key=lambda e: len(e["values"]), default=None)
        if widest is not None and len(widest["values"]) > 2:
            widest["values"].pop()
            widest["truncated"] = int(widest.get("truncated") or 0) + 1
        elif len(top) > 3:
            top.pop()
        else:
            break
        text = encode(summary)
    return summary, text
