from mlops_operator.api.naming import child_name, model_version_name, trial_name


def test_short_names_are_parent_dash_role():
    assert child_name("iris", "trainer") == "iris-trainer"
    assert trial_name("iris", 3) == "iris-t003"
    assert model_version_name("iris", 12) == "iris-v12"


def test_long_names_are_cut_to_63_with_a_stable_hash():
    parent = "a" * 70
    first = child_name(parent, "trainer")
    assert len(first) == 63
    assert first == child_name(parent, "trainer")
    assert first != child_name(parent, "router")
    assert child_name("b" * 60, "router") != child_name("b" * 61, "router")
