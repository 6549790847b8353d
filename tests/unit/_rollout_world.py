"""A deterministic world for rollout tests: traffic split by the current weights, each variant
with its own error rate, latency and accuracy, counted into cumulative counters exactly as
the router and the servers count them (see mlops_operator.metrics_reader)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from mlops_operator.api.inference_service import CounterSnapshot, InferenceServiceStatus, VariantCounters
from mlops_operator.rollout import state_machine as sm

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")


@dataclass
class Behaviour:
    """How a variant answers: share of 5xx, latency in seconds, share of correct predictions."""

    error_rate: float = 0.0
    latency: float = 0.004
    accuracy: float = 0.95


@dataclass
class Counters:
    requests: float = 0.0
    errors: float = 0.0
    latency: dict[str, float] = field(default_factory=lambda: {b: 0.0 for b in BUCKETS})
    correct: float = 0.0
    incorrect: float = 0.0

    def add(self, n: float, behaviour: Behaviour, feedback_share: float) -> None:
        self.requests += n
        self.errors += n * behaviour.error_rate
        for bound in BUCKETS:
            if bound == "+Inf" or behaviour.latency <= float(bound):
                self.latency[bound] += n
        answered = n * (1 - behaviour.error_rate) * feedback_share
        self.correct += answered * behaviour.accuracy
        self.incorrect += answered * (1 - behaviour.accuracy)

    def view(self) -> VariantCounters:
        return VariantCounters(requests=self.requests, errors=self.errors, latency_buckets=dict(self.latency),
                               feedback_correct=self.correct, feedback_incorrect=self.incorrect)


@dataclass
class World:
    rps: float = 100.0
    feedback_share: float = 1.0
    champion: Behaviour = field(default_factory=Behaviour)
    challenger: Behaviour = field(default_factory=Behaviour)
    champion_counts: Counters = field(default_factory=Counters)
    challenger_counts: Counters = field(default_factory=Counters)
    shadow: dict[str, float] = field(default_factory=lambda: {"agree": 0.0, "disagree": 0.0, "error": 0.0})
    agreement: float = 0.97
    metrics_up: bool = True
    # The champion Deployment: the version it runs ready, and since when it is asked to change.
    champion_deployment: str | None = None
    promoting_since: datetime | None = None

    def serve(self, split, seconds: float) -> None:
        n = self.rps * seconds
        to_challenger = n * split.challenger / 100
        self.champion_counts.add(n - to_challenger, self.champion, self.feedback_share)
        if split.mode == "shadow":
            mirrored = Counters()
            mirrored.add(n, self.challenger, self.feedback_share)
            self.challenger_counts.requests += 0  # the router does not count mirrored calls as answers
            self.challenger_counts.latency = {k: self.challenger_counts.latency[k] + mirrored.latency[k]
                                              for k in BUCKETS}
            self.challenger_counts.correct += mirrored.correct
            self.challenger_counts.incorrect += mirrored.incorrect
            errors = n * self.challenger.error_rate
            self.shadow["error"] += errors
            self.shadow["agree"] += (n - errors) * self.agreement
            self.shadow["disagree"] += (n - errors) * (1 - self.agreement)
        elif to_challenger:
            self.challenger_counts.add(to_challenger, self.challenger, self.feedback_share)

    def snapshot(self, now: datetime) -> CounterSnapshot:
        return CounterSnapshot(time=sm.timestamp(now), champion=self.champion_counts.view(),
                               challenger=self.challenger_counts.view(), shadow_agree=self.shadow["agree"],
                               shadow_disagree=self.shadow["disagree"], shadow_error=self.shadow["error"])


@dataclass
class Tick:
    time: float  # seconds since the rollout started
    stage: str | None
    weight: int
    mode: str
    verdict: str | None
    events: tuple[str, ...]


def run(status: InferenceServiceStatus, spec, world: World, seconds: int, *, restart_each_tick: bool = False,
        approval=lambda t, status: None, paused=lambda t: False, tick: float = 1.0,
        until_stable: bool = True, start_at: datetime = T0) -> tuple[InferenceServiceStatus, list[Tick]]:
    """Drive the state machine once per `tick` seconds for `seconds`; the champion Deployment
    becomes ready at the promoted version one tick after promotion starts."""
    now = start_at
    trace: list[Tick] = []
    if world.champion_deployment is None:
        world.champion_deployment = status.champion
    for i in range(int(seconds / tick)):
        world.serve(sm.traffic(status, spec), tick)
        now = start_at + timedelta(seconds=(i + 1) * tick)
        current_spec = spec.model_copy(update={"paused": paused(now - T0)})
        if status.rollout_stage == "Promoting":
            if world.promoting_since is None:
                world.promoting_since = now
            elif now - world.promoting_since >= timedelta(seconds=tick):
                world.champion_deployment = status.challenger
        obs = sm.Observations(
            challenger_ready=True,
            champion_ready=True,
            champion_ready_version=world.champion_deployment,
            metrics=world.snapshot(now) if world.metrics_up and sm.wants_metrics(status, current_spec, now) else None,
            metrics_error=None if world.metrics_up else "connection refused",
            routers_in_sync=True,
            approval=approval(now - T0, status),
        )
        outcome = sm.advance(status, current_spec, obs, now)
        status = outcome.status
        if restart_each_tick:
            status = InferenceServiceStatus.model_validate(status.dump())
        split = sm.traffic(status, spec)
        trace.append(Tick((now - start_at).total_seconds(), status.rollout_stage, split.challenger, split.mode,
                          outcome.analysis.verdict if outcome.analysis else None,
                          tuple(f"{e.type}/{e.reason}: {e.message}" for e in outcome.events)))
        if until_stable and status.rollout_stage is None:
            break
    return status, trace


def started(champion: str = "iris-v1", challenger: str = "iris-v2") -> InferenceServiceStatus:
    return sm.start(InferenceServiceStatus(champion=champion), challenger, T0, "test").status
