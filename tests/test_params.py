import pytest

from covid_mobilenet.run.params import RULES, ParameterError, check_parameters, check_value, notebook_defaults


@pytest.fixture
def defaults():
    return notebook_defaults()


def test_the_notebook_declares_exactly_the_checked_parameters(defaults):
    assert list(defaults) == list(RULES)
    assert defaults["experiment"] == "mn_resultset1"
    assert (defaults["hidden_layers"], defaults["dense_units"], defaults["learning_rate"]) == (1, 8, 1e-5)
    assert check_parameters(defaults) == defaults


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("learning_rate", "abc", "'abc' (str)"),
        ("learning_rate", 0, "> 0"),
        ("learning_rate", -1e-3, "> 0"),
        ("dense_units", 0, ">= 1"),
        ("dense_units", 8.5, "(float)"),
        ("hidden_layers", -1, ">= 0"),
        ("dropout", 1.0, "[0, 1)"),
        ("dropout", -0.1, "[0, 1)"),
        ("image_size", 16, ">= 32"),
        ("epochs", 0, ">= 1"),
        ("epochs", True, "(bool)"),
        ("train_base", "yes", "(str)"),
        ("weights", "imagenett", "unknown"),
        ("weights", "/no/such/file.h5", "does not exist"),
        ("weights", 3, "(int)"),
        ("experiment", "a b/c", "run name"),
        ("batchnorm_momentum", 1.5, "(0, 1)"),
        ("results_dir", None, "got None"),
    ],
)
def test_bad_values_name_the_parameter(defaults, name, value, fragment):
    with pytest.raises(ParameterError) as error:
        check_parameters({**defaults, name: value})
    assert f"Parameter {name} " in str(error.value)
    assert fragment in str(error.value)


def test_a_typo_is_an_error_with_a_suggestion(defaults):
    with pytest.raises(ParameterError, match=r"Unknown parameter 'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        check_parameters({**defaults, "lerning_rate": 0.1})


def test_fractions_must_leave_a_training_split(defaults):
    with pytest.raises(ParameterError, match="val_fraction \\+ test_fraction"):
        check_parameters({**defaults, "val_fraction": 0.5, "test_fraction": 0.5})


def test_ints_are_accepted_as_floats_and_weights_paths_resolved(defaults, tmp_path):
    file = tmp_path / "backbone.weights.h5"
    file.write_bytes(b"x")
    params = check_parameters({**defaults, "learning_rate": 1, "weights": str(file), "batchnorm_momentum": 0.9})
    assert params["learning_rate"] == 1.0 and isinstance(params["learning_rate"], float)
    assert params["weights"] == str(file)
    assert check_value("weights", None) is None


def test_kernel_names_modules_and_private_names_are_not_parameters(defaults):
    import json

    namespace = {**defaults, "json": json, "In": [], "Out": {}, "_project": "x", "get_ipython": print, "Path": type}
    assert check_parameters(namespace) == defaults


@pytest.mark.parametrize("name", ["..", "."])
def test_an_experiment_name_never_leaves_the_results_folder(defaults, tmp_path, name):
    with pytest.raises(ParameterError, match=r"Parameter experiment is '\.{1,2}': its run folder .* would not sit inside results_dir"):
        check_parameters({**defaults, "experiment": name, "results_dir": str(tmp_path / "results")})
    assert check_parameters({**defaults, "experiment": "mn.v2", "results_dir": str(tmp_path / "results")})["experiment"] == "mn.v2"
