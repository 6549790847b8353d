"""TrainingRun reconcile: the Job as a pure function, and the result read from the Job's
conditions and the trainer's termination message."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from mlops_operator.api.training_run import TrainingRun
from mlops_operator.reconcile.common import Settings
from mlops_operator.reconcile.training_run import (
    JobFacts,
    TrainerResult,
    TrainingRunObserved,
    desired_job,
    job_facts,
    parse_summary,
    reconcile,
    train_config,
    trainer_result,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(s3_endpoint="http://minio.mlops:9000", code_version="0.1.0")
SHA = "a" * 64
RUNNING = {"phase": "Running", "jobName": "iris-t003-trainer"}


def make_run(status: dict | None = None, **spec) -> TrainingRun:
    body = {
        "model": "iris",
        "experiment": "iris",
        "dataset": {"uri": "sklearn://iris"},
        "estimator": "sklearn.linear_model.LogisticRegression",
        "params": {"C": 0.5},
        "objective": {"metric": "accuracy"},
        "metrics": ["accuracy", "f1_macro"],
        "seed": 7,
    }
    body.update(spec)
    doc = {"apiVersion": "mlops.seed.io/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "iris-t003", "namespace": "team-a", "generation": 1, "uid": "u1"}, "spec": body}
    if status is not None:
        doc["status"] = status
    return TrainingRun.model_validate(doc)


def summary_ok(**extra) -> str:
    body = {"status": "Succeeded", "metrics": {"accuracy": 0.97, "f1_macro": 0.96},
            "artifactUri": "s3://mlops/team-a/iris/iris-t003/", "modelUri": "s3://mlops/team-a/iris/iris-t003/model.skops",
            "sha256": SHA, "size": 2048, "onnxUri": "s3://mlops/team-a/iris/iris-t003/model.onnx", "onnxSha256": "b" * 64,
            "servingFormat": "onnx", "datasetSha256": "c" * 64, "task": "classification", "durationSeconds": 1.5,
            "sklearnVersion": "1.9.1"}
    body.update(extra)
    return json.dumps(body)


def conditions(plan) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in plan.status["conditions"]}


class TestDesiredJob:
    def test_whole_job(self):
        run = make_run(resources={"limits": {"cpu": "1", "memory": "1Gi"}})
        job = desired_job(run, SETTINGS)
        config = json.loads(job["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"])
        labels = {
            "app.kubernetes.io/managed-by": "mlops-operator",
            "app.kubernetes.io/part-of": "mlops",
            "app.kubernetes.io/component": "trainer",
            "mlops.seed.io/trainingrun": "iris-t003",
            "mlops.seed.io/model": "iris",
            "mlops.seed.io/experiment": "iris",
        }
        assert job == {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "iris-t003-trainer", "namespace": "team-a", "labels": labels},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": 3600,
                "ttlSecondsAfterFinished": 3600,
                "podFailurePolicy": {"rules": [
                    {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [1, 2]}},
                    {"action": "Count", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [75]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": False,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                            "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "trainer",
                            "image": "mlops-runtime:0.1.0",
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["python", "-m", "mlops_runtime.train"],
                            "env": [
                                {"name": "MLOPS_TRAIN_CONFIG",
                                 "value": json.dumps(config, sort_keys=True, separators=(",", ":"))},
                                {"name": "AWS_ENDPOINT_URL", "value": "http://minio.mlops:9000"},
                                {"name": "AWS_ACCESS_KEY_ID",
                                 "valueFrom": {"secretKeyRef": {"name": "mlops-s3", "key": "AWS_ACCESS_KEY_ID"}}},
                                {"name": "AWS_SECRET_ACCESS_KEY",
                                 "valueFrom": {"secretKeyRef": {"name": "mlops-s3", "key": "AWS_SECRET_ACCESS_KEY"}}},
                                {"name": "HOME", "value": "/tmp"},
                                {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                            ],
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                                                "seccompProfile": {"type": "RuntimeDefault"}},
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                        }],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        }

    def test_config_follows_the_contract(self):
        config = train_config(make_run(crossValidation={"folds": 3}), SETTINGS)
        assert config == {
            "dataset": {"uri": "sklearn://iris", "testSize": 0.2},
            "estimator": "sklearn.linear_model.LogisticRegression",
            "params": {"C": 0.5},
            "metrics": ["accuracy", "f1_macro"],
            "seed": 7,
            "crossValidation": {"folds": 3},
            "output": "s3://mlops/team-a/iris/iris-t003/",
            "onnx": True,
            "allowedEstimators": ["sklearn."],
            "lineage": {"namespace": "team-a", "model": "iris", "trainingRun": "iris-t003",
                        "experiment": "iris", "image": "mlops-runtime:0.1.0"},
        }

    def test_spec_endpoint_wins_and_none_is_omitted(self):
        env = desired_job(make_run(artifacts={"endpoint": "http://other:9000", "secretName": "creds"}), SETTINGS)[
            "spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "AWS_ENDPOINT_URL", "value": "http://other:9000"} in env
        assert env[2]["valueFrom"]["secretKeyRef"]["name"] == "creds"
        env = desired_job(make_run(), Settings())["spec"]["template"]["spec"]["containers"][0]["env"]
        assert "AWS_ENDPOINT_URL" not in {e["name"] for e in env}

    def test_no_ttl_when_disabled(self):
        assert "ttlSecondsAfterFinished" not in desired_job(make_run(ttlSecondsAfterFinished=None), SETTINGS)["spec"]


class TestObservation:
    def test_job_facts(self):
        job = {"metadata": {"name": "j"}, "status": {"active": 0, "startTime": "t0", "conditions": [
            {"type": "FailureTarget", "status": "True"},
            {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow",
             "lastTransitionTime": "t1"}]}}
        assert job_facts(job) == JobFacts(name="j", failed=True, failure_reason="DeadlineExceeded",
                                          failure_message="too slow", start_time="t0", finish_time="t1")
        assert job_facts({"metadata": {"name": "j"}}) == JobFacts(name="j")

    def test_trainer_result_takes_the_newest_attempt(self):
        def pod(name, finished, code, message):
            return {"metadata": {"name": name}, "status": {"containerStatuses": [
                {"name": "sidecar", "state": {"terminated": {"exitCode": 0}}},
                {"name": "trainer", "state": {"terminated": {"exitCode": code, "message": message,
                                                             "finishedAt": finished, "reason": "Error"}}}]}}
        pods = [pod("b", "2026-01-01T00:02:00Z", 0, "second"), pod("a", "2026-01-01T00:01:00Z", 75, "first")]
        assert trainer_result(pods) == TrainerResult(exit_code=0, message="second", reason="Error")
        assert trainer_result([{"metadata": {"name": "x"}, "status": {}}]) is None

    @pytest.mark.parametrize("text, expected", [
        ('{"status": "Failed", "reason": "X"}', {"status": "Failed", "reason": "X"}),
        ('Traceback...\nboom\n{"status": "Failed", "message": "m"}\n', {"status": "Failed", "message": "m"}),
        ("just a log line", None),
        ("", None),
        ('{"no": "status"}', None),
    ])
    def test_parse_summary(self, text, expected):
        assert parse_summary(text) == expected


class TestReconcile:
    def test_creates_the_job_first(self):
        plan = reconcile(make_run(), TrainingRunObserved(), NOW, SETTINGS)
        assert [c["metadata"]["name"] for c in plan.children] == ["iris-t003-trainer"]
        assert plan.status["phase"] == "Pending" and plan.status["jobName"] == "iris-t003-trainer"
        assert conditions(plan) == {"Ready": ("Unknown", "JobCreated")}
        assert plan.events == ()
        again = reconcile(make_run(status=plan.status), TrainingRunObserved(job=JobFacts(name="iris-t003-trainer")),
                          NOW, SETTINGS)
        assert again.children == () and again.events == () and again.status == plan.status

    def test_running(self):
        plan = reconcile(make_run(status={"phase": "Pending", "jobName": "iris-t003-trainer"}),
                         TrainingRunObserved(job=JobFacts(name="j", active=1, start_time="t0")), NOW, SETTINGS)
        assert plan.children == ()
        assert plan.status["phase"] == "Running" and plan.status["startTime"] == "t0"
        assert conditions(plan)["Ready"] == ("Unknown", "Running")
        assert plan.events == ()

    def test_succeeded_reads_the_summary(self):
        observed = TrainingRunObserved(job=JobFacts(name="j", complete=True, start_time="t0", finish_time="t9"),
                                       trainer=TrainerResult(0, summary_ok()))
        plan = reconcile(make_run(status=dict(RUNNING)), observed, NOW, SETTINGS)
        s = plan.status
        assert s["phase"] == "Succeeded"
        assert s["metrics"] == {"accuracy": 0.97, "f1_macro": 0.96}
        assert s["objectiveValue"] == 0.97
        assert (s["artifactUri"], s["modelUri"], s["sha256"], s["size"]) == (
            "s3://mlops/team-a/iris/iris-t003/", "s3://mlops/team-a/iris/iris-t003/model.skops", SHA, 2048)
        assert (s["servingFormat"], s["datasetSha256"], s["sklearnVersion"], s["completionTime"]) == (
            "onnx", "c" * 64, "1.9.1", "t9")
        assert conditions(plan) == {"Ready": ("True", "Succeeded"), "Succeeded": ("True", "Succeeded")}
        assert [e.reason for e in plan.events] == ["Succeeded"]

    def test_user_error_keeps_message_and_partial_metrics(self):
        message = json.dumps({"status": "Failed", "reason": "UnknownParameter",
                              "message": "LogisticRegression has no parameter 'Cx'", "metrics": {"accuracy": 0.5}})
        observed = TrainingRunObserved(job=JobFacts(name="j", failed=True, failure_reason="PodFailurePolicy"),
                                       trainer=TrainerResult(2, message))
        plan = reconcile(make_run(status=dict(RUNNING)), observed, NOW, SETTINGS)
        s = plan.status
        assert (s["phase"], s["failureReason"], s["message"]) == (
            "Failed", "UnknownParameter", "LogisticRegression has no parameter 'Cx'")
        assert s["metrics"] == {"accuracy": 0.5}
        assert conditions(plan) == {"Ready": ("False", "Failed"), "Succeeded": ("False", "UnknownParameter")}
        assert plan.events[0].type == "Warning" and plan.events[0].reason == "UnknownParameter"
        assert plan.metrics == {"training_run_failed": 1}

    def test_crash_without_summary_shows_the_log_tail(self):
        observed = TrainingRunObserved(job=JobFacts(name="j", failed=True, failure_reason="BackoffLimitExceeded"),
                                       trainer=TrainerResult(1, "Traceback (most recent call last):\nMemoryError\n"))
        plan = reconcile(make_run(status=dict(RUNNING)), observed, NOW, SETTINGS)
        assert plan.status["failureReason"] == "BackoffLimitExceeded"
        assert plan.status["message"] == "Traceback (most recent call last):\nMemoryError"

    def test_deadline_without_pod_result(self):
        observed = TrainingRunObserved(job=JobFacts(name="j", failed=True, failure_reason="DeadlineExceeded",
                                                    failure_message="Job was active longer than specified deadline"))
        plan = reconcile(make_run(status=dict(RUNNING)), observed, NOW, SETTINGS)
        assert (plan.status["failureReason"], plan.status["message"]) == (
            "DeadlineExceeded", "Job was active longer than specified deadline")

    def test_complete_without_summary_waits_then_fails(self):
        finished = NOW - timedelta(seconds=10)
        job = JobFacts(name="j", complete=True, finish_time=finished.strftime("%Y-%m-%dT%H:%M:%SZ"))
        plan = reconcile(make_run(status=dict(RUNNING)), TrainingRunObserved(job=job), NOW, SETTINGS)
        assert plan.status["phase"] == "Running" and plan.requeue_after == 5.0
        later = reconcile(make_run(status=dict(RUNNING)), TrainingRunObserved(job=job),
                          NOW + timedelta(minutes=2), SETTINGS)
        assert (later.status["phase"], later.status["failureReason"]) == ("Failed", "ResultMissing")

    def test_terminal_run_never_recreates_its_job(self):
        # ttlSecondsAfterFinished removed the Job: the record stays, nothing is re-run.
        status = {"phase": "Succeeded", "jobName": "iris-t003-trainer", "metrics": {"accuracy": 0.9}}
        plan = reconcile(make_run(status=status), TrainingRunObserved(), NOW, SETTINGS)
        assert plan.children == () and plan.events == ()
        assert plan.status["phase"] == "Succeeded" and plan.status["metrics"] == {"accuracy": 0.9}

    def test_idempotent(self):
        observed = TrainingRunObserved(job=JobFacts(name="j", complete=True, finish_time="t9"),
                                       trainer=TrainerResult(0, summary_ok()))
        first = reconcile(make_run(status=dict(RUNNING)), observed, NOW, SETTINGS)
        again = reconcile(make_run(status=first.status), observed, NOW + timedelta(minutes=1), SETTINGS)
        assert again.status == first.status and again.events == ()

    def test_unknown_summary_fields_do_not_lose_the_rest(self):
        observed = TrainingRunObserved(job=JobFacts(name="j", complete=True, finish_time="t9"),
                                       trainer=TrainerResult(0, summary_ok(servingFormat="tflite", newField=1)))
        plan = reconcile(make_run(status=dict(RUNNING)), observed, NOW, SETTINGS)
        assert plan.status["phase"] == "Succeeded" and plan.status["sha256"] == SHA
        assert "servingFormat" not in plan.status
