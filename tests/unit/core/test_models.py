from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from runner import ExperimentDefaults, ExperimentResult, ExperimentSpec, PreprocessingConfig


def test_preprocessing_accepts_each_documented_value_and_none() -> None:
    """Every documented choice, "none" included, is a valid preprocessing value."""
    for missing in ("mean", "median", "most_frequent", "none"):
        for scaling in ("standard", "minmax", "robust", "none"):
            for encoding in ("onehot", "ordinal", "none"):
                PreprocessingConfig(missing_values=missing, scaling=scaling, encoding=encoding)


@pytest.mark.parametrize(
    "field", [{"missing_values": "zero"}, {"scaling": "log"}, {"encoding": "target"}]
)
def test_preprocessing_rejects_unknown_values(field: dict[str, str]) -> None:
    """An unknown preprocessing choice is a validation error, not a silent default."""
    with pytest.raises(ValidationError):
        PreprocessingConfig(**field)


def test_spec_requires_name_and_model_type() -> None:
    """A spec without an experiment name or model type does not validate."""
    with pytest.raises(ValidationError):
        ExperimentSpec(experiment_name="", model_type="LogisticRegression")
    with pytest.raises(ValidationError):
        ExperimentSpec(experiment_name="x", model_type="")


def _result(**overrides: object) -> ExperimentResult:
    fields: dict[str, object] = {
        "experiment_name": "x",
        "iteration": 1,
        "model_type": "SVC",
        "execution_time": 1.5,
        "success": True,
        "code_path": "/e/x.py",
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
        "metrics": {"accuracy": 0.9},
    }
    fields.update(overrides)
    return ExperimentResult.model_validate(fields)


def test_get_primary_metric_returns_metric_or_none() -> None:
    """get_primary_metric gives a reported metric, and None for one not reported."""
    result = _result()
    assert result.get_primary_metric("accuracy") == 0.9
    assert result.get_primary_metric("roc_auc") is None


def test_result_round_trips_through_json() -> None:
    """A result serialised to JSON reads back equal, sandbox fields included."""
    result = _result(exit_code=137, timed_out=True, image_id="sha256:abc", stdout_truncated=True)
    assert ExperimentResult.model_validate_json(result.model_dump_json()) == result


def test_defaults_read_runner_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """ExperimentDefaults takes RUNNER_* variables; experiment_timeout defaults to 300."""
    assert ExperimentDefaults().experiment_timeout == 300
    monkeypatch.setenv("RUNNER_EXPERIMENT_TIMEOUT", "60")
    monkeypatch.setenv("RUNNER_MEMORY_LIMIT", "4g")
    defaults = ExperimentDefaults()
    assert defaults.experiment_timeout == 60
    assert defaults.memory_limit == "4g"
