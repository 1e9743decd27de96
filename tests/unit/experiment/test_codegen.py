import ast
import json
import stat
from pathlib import Path

import pytest

from runner import CodeGenerator, ExperimentSpec, PreprocessingConfig
from runner.cli.demo import demo_data
from runner.experiment.codegen import ESTIMATORS, SCRIPT_NAME


def spec(model_type: str = "LogisticRegression", **params: object) -> ExperimentSpec:
    return ExperimentSpec(
        experiment_name="logistic baseline/../x",
        model_type=model_type,
        model_params=params,
        preprocessing=PreprocessingConfig(
            missing_values="mean", scaling="robust", encoding="ordinal"
        ),
    )


def test_generates_a_self_contained_readable_directory(tmp_path: Path) -> None:
    """Script, data copy and spec sit in a new 0755 directory, files 0644."""
    script = CodeGenerator(tmp_path).generate(spec(C=0.5), demo_data(), "churned")
    directory = script.parent
    assert script.name == SCRIPT_NAME
    assert directory.parent == tmp_path.resolve()
    assert sorted(p.name for p in directory.iterdir()) == ["churn.csv", SCRIPT_NAME, "spec.json"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in directory.iterdir())
    assert (directory / "churn.csv").read_bytes() == demo_data().read_bytes()
    assert ".." not in directory.name and "/" not in directory.name


def test_each_experiment_gets_its_own_directory(tmp_path: Path) -> None:
    """Generating the same spec twice never overwrites the first."""
    generator = CodeGenerator(tmp_path)
    first = generator.generate(spec(), demo_data(), "churned")
    second = generator.generate(spec(), demo_data(), "churned")
    assert first.parent != second.parent


def test_script_is_valid_python_with_the_specs_choices(tmp_path: Path) -> None:
    """The script parses, imports the named model and carries the preprocessing choices."""
    script = CodeGenerator(tmp_path).generate(spec(C=0.5), demo_data(), "churned")
    source = script.read_text()
    ast.parse(source)
    assert "from sklearn.linear_model import LogisticRegression as Model" in source
    tree = ast.parse(source)
    settings_call = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SETTINGS"
    )
    settings = json.loads(ast.literal_eval(settings_call.args[0]))  # type: ignore[attr-defined]
    assert settings["model_params"] == {"C": 0.5}
    assert (settings["missing_values"], settings["scaling"], settings["encoding"]) == (
        "mean", "robust", "ordinal"
    )  # fmt: skip
    assert settings["target_column"] == "churned"


def test_parameter_values_cannot_inject_code(tmp_path: Path) -> None:
    """A hostile string parameter stays a string literal inside the JSON settings."""
    hostile = '"); import os; os.system("id"); ("'
    script = CodeGenerator(tmp_path).generate(spec(solver=hostile), demo_data(), "churned")
    tree = ast.parse(script.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "system"]
    assert calls == []


def test_unknown_model_lists_the_allowed_ones(tmp_path: Path) -> None:
    """A model outside the allow-list is refused with the names that are allowed."""
    with pytest.raises(ValueError, match=r"Unknown model_type 'os.system'.*RandomForestClassifier"):
        CodeGenerator(tmp_path).generate(spec("os.system"), demo_data(), "churned")


def test_model_must_fit_the_task(tmp_path: Path) -> None:
    """A regressor for a classification task is refused."""
    with pytest.raises(ValueError, match="regression model"):
        CodeGenerator(tmp_path).generate(spec("Ridge"), demo_data(), "churned", "classification")


def test_missing_target_column_is_named(tmp_path: Path) -> None:
    """A target that is not a CSV column is refused, listing the columns."""
    with pytest.raises(ValueError, match=r"'price' is not in churn\.csv"):
        CodeGenerator(tmp_path).generate(spec(), demo_data(), "price")


def test_params_must_be_plain_json(tmp_path: Path) -> None:
    """Parameters that are not JSON values, or bad names, are refused."""
    with pytest.raises(ValueError, match="plain JSON"):
        CodeGenerator(tmp_path).generate(spec(C=float("nan")), demo_data(), "churned")
    bad = spec().model_copy(update={"model_params": {"C;x": 1}})
    with pytest.raises(ValueError, match="not a valid parameter name"):
        CodeGenerator(tmp_path).generate(bad, demo_data(), "churned")


def test_every_allowed_estimator_is_a_scikit_learn_class_name() -> None:
    """The allow-list names only sklearn modules and identifier class names."""
    for name, (module, task) in ESTIMATORS.items():
        assert module.startswith("sklearn.")
        assert name.isidentifier()
        assert task in ("classification", "regression")
