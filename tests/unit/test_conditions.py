from datetime import datetime, timedelta, timezone

from mlops_operator.api.conditions import (
    Condition,
    find_condition,
    is_stale,
    is_true,
    set_condition,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_gets_transition_time_and_generation():
    conds = set_condition([], "Ready", "False", "Pending", "waiting", generation=3, now=T0)
    assert [c.model_dump() for c in conds] == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Pending",
            "message": "waiting",
            "last_transition_time": "2026-01-01T12:00:00Z",
            "observed_generation": 3,
        }
    ]


def test_same_status_keeps_transition_time_but_updates_reason_and_generation():
    conds = set_condition([], "Ready", "False", "Pending", "waiting", generation=1, now=T0)
    conds = set_condition(conds, "Ready", "False", "JobCreated", "job made", generation=2, now=T1)
    ready = find_condition(conds, "Ready")
    assert ready.last_transition_time == "2026-01-01T12:00:00Z"
    assert (ready.reason, ready.message, ready.observed_generation) == ("JobCreated", "job made", 2)


def test_status_flip_moves_transition_time():
    conds = set_condition([], "Ready", "False", "Pending", "", generation=1, now=T0)
    conds = set_condition(conds, "Ready", "True", "Succeeded", "", generation=1, now=T1)
    assert find_condition(conds, "Ready").last_transition_time == "2026-01-01T12:05:00Z"
    assert is_true(conds, "Ready")


def test_other_condition_types_are_left_alone():
    other = Condition(type="Custom", status="True", reason="Theirs", last_transition_time="x")
    conds = set_condition([other], "Ready", "True", "Ok", "", generation=1, now=T0)
    assert conds[0] is other
    assert [c.type for c in conds] == ["Custom", "Ready"]


def test_condition_from_older_generation_is_stale():
    cond = set_condition([], "Ready", "True", "Ok", "", generation=1, now=T0)[0]
    assert is_stale(cond, generation=2)
    assert not is_stale(cond, generation=1)
