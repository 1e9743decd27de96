"""The demo: generate experiments for the shipped data set and run them in the sandbox."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from runner.core.models import ExperimentSpec, PreprocessingConfig
from runner.experiment.codegen import CodeGenerator
from runner.experiment.holdout import Holdout
from runner.experiment.jobs import Job

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
        ExperimentSpec(
            experiment_name="gradient_boosting",
            hypothesis="Boosted trees beat a single forest on tabular data",
            model_type="HistGradientBoostingClassifier",
            model_params={"max_iter": 100, "learning_rate": 0.05, "random_state": 0},
            preprocessing=PreprocessingConfig(
                missing_values="median", scaling="none", encoding="ordinal"
            ),
            reasoning="Gradient boosting with ordinal-encoded categories",
        ),
        ExperimentSpec(
            experiment_name="svm_rbf",
            hypothesis="A smooth non-linear boundary separates churners",
            model_type="SVC",
            model_params={"C": 1.0, "kernel": "rbf", "probability": True, "random_state": 0},
            preprocessing=PreprocessingConfig(
                missing_values="median", scaling="standard", encoding="onehot"
            ),
            reasoning="Kernel methods need scaled inputs",
        ),
        ExperimentSpec(
            experiment_name="nearest_neighbours",
            hypothesis="Similar customers churn alike",
            model_type="KNeighborsClassifier",
            model_params={"n_neighbors": 15},
            preprocessing=PreprocessingConfig(
                missing_values="median", scaling="minmax", encoding="onehot"
            ),
            reasoning="Distance-based baseline on min-max scaled features",
        ),
    ]


def demo_holdout() -> Holdout:
    """The demo's held-out split: a quarter of the churn rows, whose labels no script sees."""
    return Holdout(demo_data(), TARGET, "classification")


def demo_jobs(generator: CodeGenerator, *, holdout: bool = True) -> list[Job]:
    """One generated script per demo spec, each in its own directory; with ``holdout``
    (the default), scripts of the held-out protocol (run them with ``demo_holdout()``)."""
    return [
        (generator.generate(spec, demo_data(), TARGET, "classification", holdout=holdout), spec, 0)
        for spec in demo_specs()
    ]
