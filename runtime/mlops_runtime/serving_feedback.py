"""Label feedback: what the model predicted for a request id, scored when the true label arrives.

The server remembers the predictions of its last `capacity` requests (oldest forgotten first).
A request id is scored once: its entry is dropped when its feedback arrives, so a repeated
feedback call cannot count twice. Accuracy and mean absolute error are cumulative since start.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

CORRECT, INCORRECT, OBSERVED = "correct", "incorrect", "observed"


class FeedbackError(ValueError):
    """Feedback that cannot be scored (the message says why)."""


def same_label(predicted: Any, actual: Any) -> bool:
    """Labels compare as numbers when both are numbers (1 == 1.0), else as text ("1" == 1)."""
    numbers = (int, float)
    if isinstance(predicted, numbers) and isinstance(actual, numbers) and not isinstance(actual, bool):
        return float(predicted) == float(actual)
    return str(predicted) == str(actual)


@dataclass
class Scored:
    outcomes: list[str]
    abs_errors: list[float]


class FeedbackBook:
    def __init__(self, task: str, capacity: int = 100_000) -> None:
        self.task = task
        self.capacity = max(1, capacity)
        self.pending: OrderedDict[str, list[Any]] = OrderedDict()
        self.correct = 0
        self.incorrect = 0
        self.observed = 0
        self.abs_error_sum = 0.0

    def remember(self, request_id: str, predictions: list[Any]) -> None:
        self.pending[request_id] = tuple(predictions)  # a tuple of scalars: untracked by the cyclic GC
        if len(self.pending) > self.capacity:
            self.pending.popitem(last=False)

    def knows(self, request_id: str) -> bool:
        return request_id in self.pending

    def score(self, request_id: str, label: Any) -> Scored:
        """Score one request's true label(s): a scalar for a one-row request, else one per row."""
        predictions = self.pending.get(request_id)
        if predictions is None:
            raise KeyError(request_id)
        labels = label if isinstance(label, list) else [label]
        if len(labels) != len(predictions):
            raise FeedbackError(f"request {request_id!r} predicted {len(predictions)} row(s); "
                                f"feedback has {len(labels)} label(s)")
        if self.task == "regression":
            errors = []
            for value in labels:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise FeedbackError(f"feedback for request {request_id!r} must be numbers, got {value!r:.40}")
            for predicted, value in zip(predictions, labels):
                errors.append(abs(float(predicted) - float(value)))
            del self.pending[request_id]
            self.observed += len(errors)
            self.abs_error_sum += sum(errors)
            return Scored([OBSERVED] * len(errors), errors)
        outcomes = [CORRECT if same_label(p, a) else INCORRECT for p, a in zip(predictions, labels)]
        del self.pending[request_id]
        right = outcomes.count(CORRECT)
        self.correct += right
        self.incorrect += len(outcomes) - right
        return Scored(outcomes, [])

    @property
    def accuracy(self) -> float | None:
        total = self.correct + self.incorrect
        return self.correct / total if total else None

    @property
    def mean_abs_error(self) -> float | None:
        return self.abs_error_sum / self.observed if self.observed else None
