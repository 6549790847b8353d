"""Edges of the pure reconcilers and the artifact store that a mutation run (`make
mutation`, issue #15) showed no test pinned: each test here kills a surviving mutant that
would be a real bug (an ordering slip in a string comparison, an off-by-one at a limit, a
negated branch, history ignored by the search)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from _inference_world import inference_service, model_version

from mlops_operator.api.inference_service import (
    AnalysisResult,
    Drift,
    DriftStatus,
    HistoryEntry,
    InferenceService,
    InferenceServiceStatus,
)
from mlops_operator.api.model_version import ModelVersion
from mlops_operator.reconcile import drift as drift_logic
from mlops_operator.reconcile import inference_service as logic
from mlops_operator.reconcile import model_version as mv_logic
from mlops_operator.reconcile import training_run as run_logic
from mlops_operator.reconcile.experiment import ExperimentObserved, TrialFacts, reconcile
from mlops_operator.search import propose
from mlops_runtime import store
from test_reconcile_experiment import NOW, make_exp
from test_reconcile_inference_service import plan_for
from test_reconcile_model_version import make_mv

T = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


# -- serving ----------------------------------------------------------------------------------


def test_a_skops_version_is_served_as_skops_even_when_it_names_an_onnx_file():
    # An ONNX file whose parity failed (or that a user named) is not served unless the
    # version says servingFormat onnx: "skops" sorts after "onnx", so an ordering slip would.
    doc = model_version(1, onnx=True)
    doc["spec"]["artifact"]["servingFormat"] = "skops"
    args = logic.serve_args(InferenceService.model_validate(inference_service(champion={"modelVersion": "iris-v1"})),
                            ModelVersion.model_validate(doc), "champion")
    assert "--onnx-uri" not in args and "--onnx-sha256" not in args


def rollout_status(**fields) -> InferenceServiceStatus:
    return InferenceServiceStatus.model_validate({"champion": "iris-v1", "challenger": "iris-v2", "split": "75/25",
                                                  **fields})


def test_the_progressing_condition_names_the_step_it_is_at():
    status = rollout_status(rolloutStage="Analysing", currentStep=1)
    assert logic._progressing_condition(status, "Progressing", None) == ("True", "StepAdvanced", "step 2, split 75/25")


def test_a_failed_analysis_below_the_failure_limit_is_not_reported_as_inconclusive():
    failed = AnalysisResult(time="2026-01-01T12:00:00Z", step=0, weight=25, verdict="Fail", message="errors")
    status = rollout_status(rolloutStage="Analysing", currentStep=0, lastAnalysis=failed.model_dump(by_alias=True))
    assert logic._progressing_condition(status, "Progressing", None)[1] == "StepAdvanced"


def test_a_promotion_in_progress_is_reported_as_promoting():
    status = rollout_status(rolloutStage="Promoting", currentStep=2)
    # Not yet Promoted: the champion Deployment is still rolling out to the winner.
    assert logic._progressing_condition(status, "Promoted", None) == (
        "True", "Promoting", "iris-v2 passed; serving all traffic from it while the champion Deployment rolls out to it")
    entry = HistoryEntry(time="2026-01-01T12:00:00Z", action="Promoted", version="iris-v2", reason="all steps passed")
    finalizing = rollout_status(rolloutStage="Finalizing", history=[entry.model_dump(by_alias=True)])
    assert logic._progressing_condition(finalizing, "Promoted", None) == ("True", "Promoted", "all steps passed")


def test_a_stable_service_says_what_ready_says():
    plan = plan_for(inference_service(), model_version(1))
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert plan.status["message"] == ready["message"] != ""


# -- drift ------------------------------------------------------------------------------------


def test_a_drift_reading_of_another_version_does_not_hold_back_the_champions_first_reading():
    spec = Drift(interval="60s")
    other = DriftStatus(time="2026-01-01T12:00:00Z", version="iris-v3", max_psi=0.1, feature="x", threshold=0.2,
                        drifted=False)
    # iris-v3 was rolled back; iris-v2 serves: its first reading is due now, not in 60 s.
    assert drift_logic.read_due(spec, other, "iris-v2", T + timedelta(seconds=1))
    same = other.model_copy(update={"version": "iris-v2"})
    assert not drift_logic.read_due(spec, same, "iris-v2", T + timedelta(seconds=1))


# -- ModelVersion -----------------------------------------------------------------------------


def test_the_champion_compared_with_is_only_ever_the_named_services():
    mv = make_mv(validation={"compareWithChampionOf": "alpha", "gates": []})
    services = [mv_logic.ServiceFacts(name="alpha"), mv_logic.ServiceFacts(name="beta", champion="iris-v1")]
    assert mv_logic.champion_service(mv, services) is None


def test_a_validated_version_says_which_gates_it_passed():
    plan = mv_logic.reconcile(make_mv(status={"phase": "Pending"}, gates=[{"metric": "accuracy", "threshold": 0.9}]),
                              mv_logic.ModelVersionObserved(), NOW)
    assert plan.status["message"] == "validated: accuracy: accuracy=0.95 >= 0.9"


# -- TrainingRun ------------------------------------------------------------------------------


def test_a_message_exactly_at_the_limit_is_kept_whole_and_one_longer_is_cut_from_the_front():
    limit = run_logic.MESSAGE_LIMIT
    assert run_logic._tail("x" * limit) == "x" * limit
    cut = run_logic._tail("a" + "x" * limit)
    assert len(cut) == limit and cut.startswith("...") and cut.endswith("x")


# -- Experiment ---------------------------------------------------------------------------------


def test_bayesian_proposals_learn_from_the_succeeded_trials():
    search = {"algorithm": "bayesian", "initialRandomTrials": 2, "maxTrials": 6, "parallelism": 1,
              "space": {"C": {"min": 0.01, "max": 10.0, "distribution": "logUniform"}}}
    exp = make_exp(search=search)
    done = tuple(TrialFacts(name=f"iris-t{i:03d}", index=i, phase="Succeeded", params={"kernel": "rbf", "C": c},
                            objective_value=v) for i, (c, v) in enumerate([(0.05, 0.6), (5.0, 0.95)], start=1))
    plan = reconcile(exp, ExperimentObserved(trials=done), NOW)
    [child] = plan.children
    history = [({"C": 0.05}, 0.6), ({"C": 5.0}, 0.95)]
    assert {"C": child["spec"]["params"]["C"]} == propose(exp.spec.search, history, 3, True)
    assert propose(exp.spec.search, history, 3, True) != propose(exp.spec.search, [], 3, True)


# -- the artifact store -----------------------------------------------------------------------


def test_artifact_uris_join_with_one_slash():
    assert store.join_uri("s3://mlops/ns/iris/run/", "model.skops") == "s3://mlops/ns/iris/run/model.skops"
    assert store.join_uri("s3://mlops/ns/iris/run", "model.skops") == "s3://mlops/ns/iris/run/model.skops"


def test_long_store_errors_are_cut_to_the_limit_with_an_ellipsis():
    short = store._short(ValueError("S3 said no"))
    assert short == "ValueError: S3 said no"
    exact = store._short(ValueError("x" * (300 - len("ValueError: "))))
    assert len(exact) == 300 and not exact.endswith("...")  # at the limit: whole
    cut = store._short(ValueError("x" * 500))
    assert len(cut) == 300 and cut.startswith("ValueError: xxx") and cut.endswith("...")


def test_a_version_without_the_objective_metric_never_ranks_above_one_with_it():
    # rmse is minimised: a version scored 0.3 must beat one with no rmse at all (which a
    # missing value read as 0.0, or as "has the metric", would not).
    scored, unscored = (ModelVersion.model_validate(model_version(n)) for n in (1, 2))
    objective = {"objective": {"metric": "rmse", "goal": "minimize"}}
    scored = scored.model_copy(update={"spec": scored.spec.model_copy(update={
        "metrics": {"rmse": 0.3}, "objective": scored.spec.objective.model_copy(update=objective["objective"])})})
    unscored = unscored.model_copy(update={"spec": unscored.spec.model_copy(update={
        "metrics": {}, "objective": scored.spec.objective})})
    assert max([unscored, scored], key=logic.objective_key) is scored
    assert max([scored, unscored], key=logic.objective_key) is scored


def test_a_spec_changed_again_after_it_was_restored_is_refused_with_an_event_again():
    first = mv_logic.reconcile(make_mv(), mv_logic.ModelVersionObserved(), NOW)
    changed = mv_logic.reconcile(make_mv(status=first.status, metrics={"accuracy": 0.99}),
                                 mv_logic.ModelVersionObserved(), NOW)
    restored = mv_logic.reconcile(make_mv(status=changed.status), mv_logic.ModelVersionObserved(), NOW)
    again = mv_logic.reconcile(make_mv(status=restored.status, metrics={"accuracy": 0.5}),
                               mv_logic.ModelVersionObserved(), NOW)
    assert [e.reason for e in again.events] == ["SpecImmutable"]


def test_condition_reasons_are_camel_case_words():
    from mlops_operator.reconcile.common import camel_reason

    assert camel_reason("UnknownParameter", "Failed") == "UnknownParameter"
    assert camel_reason("unknown parameter", "Failed") == "UnknownParameter"
    assert camel_reason("3 errors", "Failed") == "Failed"
    assert camel_reason(None, "Failed") == "Failed"


def test_s3_retries_back_off_doubling_up_to_eight_seconds():
    # docs/contracts.md: MLOPS_S3_BACKOFF seconds, doubling, capped at 8.
    assert store.backoff_delays(6, 0.5) == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert store.backoff_delays(0, 0.5) == []


def test_the_s3_client_signs_with_the_configured_keys():
    client = store.make_client(store.StoreSettings("http://127.0.0.1:9000", "mlops-local", "not-a-secret"))
    credentials = client._provider.retrieve()  # minio's own record of what it signs with
    assert (credentials.access_key, credentials.secret_key) == ("mlops-local", "not-a-secret")
    anonymous = store.make_client(store.StoreSettings("http://127.0.0.1:9000", "", ""))
    assert anonymous._provider is None


def test_an_experiment_records_when_its_first_trials_started():
    plan = reconcile(make_exp(), ExperimentObserved(), NOW)
    assert plan.children and plan.status["startTime"] == "2026-03-01T12:00:00Z"
    later = reconcile(make_exp(status=plan.status), ExperimentObserved(), NOW + timedelta(hours=1))
    assert later.status["startTime"] == "2026-03-01T12:00:00Z"
