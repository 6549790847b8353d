"""The two kinds of failure a training run reports, and their exit codes.

A user error (bad config, bad data, unknown estimator or parameter) fails the same way on
every retry: exit 2, never retried. An infrastructure error (S3 unreachable after bounded
retries) may pass later: exit 75 (EX_TEMPFAIL), retryable.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INFRASTRUCTURE_ERROR = 75


class UserError(Exception):
    """Something the author of the run must fix; `reason` is a CamelCase word for status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InfrastructureError(Exception):
    """Something outside the run's spec failed; retrying later may succeed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
