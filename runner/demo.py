"""The demo: generate experiments for the shipped data set and run them in the sandbox."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from runner.codegen import CodeGenerator
from runner.experiment_runner import ExperimentRunner
from runner.models import ExperimentResult, ExperimentSpec, PreprocessingConfig

TARGET = "churned"


def demo_data() -> Path:
    """The synthetic churn data set that ships inside the package."""
    return Path(str(resources.files("runner") / "data" / "churn.csv"))


def demo_specs() -> list[ExperimentSpec]:
    return [
        ExperimentSpec(
            experiment_name="logistic_baseline",
            hypothesis="Establish baseline with logistic regression",
            model_type="LogisticRegression",
            model_params={"C": 1.0, "max_iter": 1000},
            preprocessing=PreprocessingConfig(
                missing_values="median", scaling="standard", encoding="onehot"
            ),
            reasoning="Starting with simple linear model",
        ),
        ExperimentSpec(
            experiment_name="random_forest",
            hypothesis="Interactions between contract and tenure matter",
            model_type="RandomForestClassifier",
            model_params={"n_estimators": 100, "max_depth": 6, "random_state": 0},
            preprocessing=PreprocessingConfig(
                missing_values="median", scaling="none", encoding="onehot"
            ),
            reasoning="Trees capture non-linear effects without scaling",
        ),
    ]


def run_demo(
    runner: ExperimentRunner,
    generator: CodeGenerator,
    *,
    report: Callable[[ExperimentResult], None] = lambda _: None,
) -> list[ExperimentResult]:
    """Generate and run each demo experiment; ``report`` sees each result as it lands."""
    results = []
    for iteration, spec in enumerate(demo_specs()):
        script = generator.generate(spec, demo_data(), TARGET, "classification")
        result = runner.run(script, spec, iteration)
        report(result)
        results.append(result)
    return results
