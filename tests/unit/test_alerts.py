"""The alerts in manifests/prometheus/rules.yaml, checked and unit-tested with promtool.

promtool reads plain rules files, so `rules.promtool.yaml` holds the PrometheusRule's
`spec` as one; it is generated (run this file: `python tests/unit/test_alerts.py`, or
`make promrules`) and a test here fails when it is stale. promtool comes from Debian's
`prometheus` package: these tests fail, not skip, without it, because .ci/run installs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "manifests" / "prometheus"
RULES = PROMETHEUS / "rules.yaml"
PROMTOOL_RULES = PROMETHEUS / "rules.promtool.yaml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yaml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
CONTRACTS = ROOT / "docs" / "contracts.md"

EXPECTED_ALERTS = {
    "TrainingRunFailed", "ExperimentFailed", "CanaryRolledBack", "CanaryStuck", "ModelDriftHigh",
    "InferenceErrorRateHigh", "InferenceLatencyHigh", "OperatorReconcileErrors", "OperatorDown",
}
GENERATED_HEADER = (
    "# Generated from rules.yaml (the PrometheusRule's spec) for promtool; do not edit.\n"
    "# Regenerate: python tests/unit/test_alerts.py  (or: make promrules)\n"
)
# Series an alert may use that no component of ours exports.
PROMETHEUS_OWN_SERIES = {"up"}
# Suffixes Prometheus adds to a histogram's name.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def render_promtool_rules(prometheus_rule: dict) -> str:
    """A PrometheusRule's spec as the text of a plain Prometheus rules file."""
    return GENERATED_HEADER + yaml.safe_dump({"groups": prometheus_rule["spec"]["groups"]},
                                             sort_keys=False, width=120)


def load_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def alert_rules() -> list[dict]:
    return [rule for group in load_rules()["spec"]["groups"] for rule in group["rules"] if "alert" in rule]


def contract_metric_names() -> set[str]:
    """Every metric name in the tables of docs/contracts.md."""
    return set(re.findall(r"^\| `(mlops_[a-z_]+)` \|", CONTRACTS.read_text(), flags=re.MULTILINE))


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(mlops_[a-z_]+|up)\b", expr))


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install -y prometheus (.ci/run does this)"
    return path


def test_the_promtool_rules_file_is_current() -> None:
    assert PROMTOOL_RULES.read_text() == render_promtool_rules(load_rules()), (
        "manifests/prometheus/rules.promtool.yaml is stale: run `python tests/unit/test_alerts.py`"
    )


def test_every_alert_is_there_once() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert sorted(names) == sorted(EXPECTED_ALERTS)


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_summary_description_and_a_runbook_that_exists(rule: dict) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    anchor = f"docs/runbooks.md#{rule['alert'].lower()}"
    assert annotations["runbook_url"] == anchor
    headings = re.findall(r"^## (\S+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    assert rule["alert"] in headings, f"docs/runbooks.md has no section '## {rule['alert']}'"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_uses_only_contract_metric_names(rule: dict) -> None:
    known = contract_metric_names()
    assert len(known) > 20, "the metric tables of docs/contracts.md were not found"
    for name in metric_names_in(rule["expr"]):
        base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.removesuffix(s) in known), name)
        assert base in known | PROMETHEUS_OWN_SERIES, f"{rule['alert']}: {name} is not in docs/contracts.md"


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../rules.promtool.yaml"], path.name
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == EXPECTED_ALERTS, f"no firing case for {EXPECTED_ALERTS - firing}"
    assert silent == EXPECTED_ALERTS, f"no silent case for {EXPECTED_ALERTS - silent}"


def test_promtool_check_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(PROMTOOL_RULES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    assert RULE_TESTS, "no promtool test files in manifests/prometheus/tests/"
    result = subprocess.run([promtool(), "test", "rules", *map(str, RULE_TESTS)],
                            capture_output=True, text=True, timeout=120, cwd=PROMETHEUS / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_notices_a_broken_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: the same case with the opposite expectation does."""
    document = yaml.safe_load((PROMETHEUS / "tests" / "operator_down.yaml").read_text())
    for case in document["tests"]:
        for check in case["alert_rule_test"]:
            check["exp_alerts"] = [] if check.get("exp_alerts") else [{"exp_labels": {"severity": "critical"}}]
    document["rule_files"] = [str(PROMTOOL_RULES)]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(document))
    result = subprocess.run([promtool(), "test", "rules", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


if __name__ == "__main__":
    PROMTOOL_RULES.write_text(render_promtool_rules(load_rules()))
    print(f"wrote {PROMTOOL_RULES.relative_to(ROOT)}", file=sys.stderr)
