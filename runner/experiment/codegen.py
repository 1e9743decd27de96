"""``CodeGenerator``: a runnable scikit-learn script for an ``ExperimentSpec`` and a CSV file."""

from __future__ import annotations

import csv
import json
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.core.models import ExperimentSpec, TaskType
from runner.core.settings import ExperimentDefaults

#: The estimators a spec may name: class name -> (module, task it solves).
ESTIMATORS: dict[str, tuple[str, TaskType]] = {
    "LogisticRegression": ("sklearn.linear_model", "classification"),
    "RidgeClassifier": ("sklearn.linear_model", "classification"),
    "SGDClassifier": ("sklearn.linear_model", "classification"),
    "RandomForestClassifier": ("sklearn.ensemble", "classification"),
    "ExtraTreesClassifier": ("sklearn.ensemble", "classification"),
    "GradientBoostingClassifier": ("sklearn.ensemble", "classification"),
    "HistGradientBoostingClassifier": ("sklearn.ensemble", "classification"),
    "AdaBoostClassifier": ("sklearn.ensemble", "classification"),
    "DecisionTreeClassifier": ("sklearn.tree", "classification"),
    "KNeighborsClassifier": ("sklearn.neighbors", "classification"),
    "SVC": ("sklearn.svm", "classification"),
    "LinearSVC": ("sklearn.svm", "classification"),
    "GaussianNB": ("sklearn.naive_bayes", "classification"),
    "MLPClassifier": ("sklearn.neural_network", "classification"),
    "LinearRegression": ("sklearn.linear_model", "regression"),
    "Ridge": ("sklearn.linear_model", "regression"),
    "Lasso": ("sklearn.linear_model", "regression"),
    "ElasticNet": ("sklearn.linear_model", "regression"),
    "SGDRegressor": ("sklearn.linear_model", "regression"),
    "RandomForestRegressor": ("sklearn.ensemble", "regression"),
    "ExtraTreesRegressor": ("sklearn.ensemble", "regression"),
    "GradientBoostingRegressor": ("sklearn.ensemble", "regression"),
    "HistGradientBoostingRegressor": ("sklearn.ensemble", "regression"),
    "AdaBoostRegressor": ("sklearn.ensemble", "regression"),
    "DecisionTreeRegressor": ("sklearn.tree", "regression"),
    "KNeighborsRegressor": ("sklearn.neighbors", "regression"),
    "SVR": ("sklearn.svm", "regression"),
    "LinearSVR": ("sklearn.svm", "regression"),
    "MLPRegressor": ("sklearn.neural_network", "regression"),
}
SCRIPT_NAME = "experiment.py"
SPEC_NAME = "spec.json"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CodeGenerator:
    """Writes each experiment into a directory of its own, with the data it reads.

    That directory is all the sandbox needs: the runner mounts it read-only.
    """

    def __init__(
        self,
        output_dir: Path | str | None = None,
        *,
        test_size: float = 0.2,
        random_state: int = 42,
    ) -> None:
        self.output_dir = Path(
            output_dir if output_dir is not None else ExperimentDefaults().experiments_dir
        )
        if not 0 < test_size < 1:
            raise ValueError(f"test_size must be between 0 and 1, not {test_size}")
        self.test_size = test_size
        self.random_state = random_state

    def generate(
        self,
        spec: ExperimentSpec,
        data_path: Path | str,
        target_column: str,
        task_type: TaskType = "classification",
        *,
        holdout: bool = False,
    ) -> Path:
        """Write the script and a copy of the data; return the script's path.

        With ``holdout``, a script of the held-out protocol (run it with
        ``holdout=Holdout(data_path, target_column, task_type)``) and no copy of
        the data: it trains on ``$TRAIN_PATH``, reports its own metrics on a
        validation split of those rows, refits on all of them and writes a
        prediction (and, where the model gives them, each class's probability)
        for every row of ``$TEST_PATH`` to ``$PREDICTIONS_PATH``.
        """
        module = _estimator_module(spec.model_type, task_type)
        params = _literal_params(spec.model_params)
        data = Path(data_path)
        if not data.is_file():
            raise FileNotFoundError(f"Data file not found: {data}")
        columns = _csv_header(data)
        if target_column not in columns:
            raise ValueError(
                f"Target column {target_column!r} is not in {data.name} "
                f"(columns: {', '.join(columns)})"
            )
        if data.name in (SCRIPT_NAME, SPEC_NAME):
            raise ValueError(f"The data file may not be called {data.name}")

        directory = self._new_directory(spec.experiment_name)
        if not holdout:
            shutil.copyfile(data, directory / data.name)
        script = directory / SCRIPT_NAME
        script.write_text(
            render_script(
                spec,
                module=module,
                params=params,
                data_file=data.name,
                target_column=target_column,
                task_type=task_type,
                test_size=self.test_size,
                random_state=self.random_state,
                holdout=holdout,
            )
        )
        (directory / SPEC_NAME).write_text(spec.model_dump_json(indent=2) + "\n")
        for path in directory.iterdir():
            path.chmod(0o644)  # readable by the sandbox's non-root user
        return script

    def _new_directory(self, experiment_name: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", experiment_name).strip("-")[:60] or "experiment"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        directory = self.output_dir / f"{slug}-{stamp}-{uuid.uuid4().hex[:6]}"
        directory.mkdir()
        directory.chmod(0o755)
        return directory.resolve()


def _estimator_module(model_type: str, task_type: str) -> str:
    if task_type not in ("classification", "regression"):
        raise ValueError(f"task_type must be 'classification' or 'regression', not {task_type!r}")
    if model_type not in ESTIMATORS:
        allowed = ", ".join(n for n, (_, t) in ESTIMATORS.items() if t == task_type)
        raise ValueError(f"Unknown model_type {model_type!r}. Allowed for {task_type}: {allowed}")
    module, task = ESTIMATORS[model_type]
    if task != task_type:
        raise ValueError(f"{model_type} is a {task} model, but the task is {task_type}")
    return module


def _literal_params(params: dict[str, Any]) -> dict[str, Any]:
    """Model parameters must be plain JSON values under identifier keys."""
    for key in params:
        if not _IDENTIFIER.match(key):
            raise ValueError(f"model_params key {key!r} is not a valid parameter name")
    try:
        return json.loads(json.dumps(params, allow_nan=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as e:
        raise ValueError(f"model_params must be plain JSON values: {e}") from e


def _csv_header(data: Path) -> list[str]:
    with data.open(newline="") as f:
        return next(csv.reader(f), [])


def render_script(
    spec: ExperimentSpec,
    *,
    module: str,
    params: dict[str, Any],
    data_file: str,
    target_column: str,
    task_type: TaskType,
    test_size: float,
    random_state: int,
    holdout: bool = False,
) -> str:
    """The Python source of one experiment. Every value goes in as a JSON literal."""
    settings = {
        "experiment_name": spec.experiment_name,
        "model_type": spec.model_type,
        "model_params": params,
        "missing_values": spec.preprocessing.missing_values,
        "scaling": spec.preprocessing.scaling,
        "encoding": spec.preprocessing.encoding,
        "data_file": data_file,
        "target_column": target_column,
        "task_type": task_type,
        "test_size": test_size,
        "random_state": random_state,
        "protocol": "holdout" if holdout else "own split",
    }
    return _TEMPLATE.format(
        name=json.dumps(spec.experiment_name),
        settings=json.dumps(json.dumps(settings, indent=1)),
        module=module,
        model_type=spec.model_type,
    )


_TEMPLATE = '''\
"""Experiment {name}, generated by experiment-runner's CodeGenerator.

Reads the CSV beside this file, fits a scikit-learn Pipeline, evaluates it on a
held-out split and prints one JSON line: {{"success": ..., "metrics": {{...}}}}.
Under the runner's held-out protocol (SETTINGS["protocol"] == "holdout") it reads
$TRAIN_PATH instead, evaluates on a split of those rows, then refits on all of them
and writes its predictions for $TEST_PATH to $PREDICTIONS_PATH, which the runner
scores.
Where $OUTPUT_DIR is set (the runner's outputs are on), the fitted pipeline is
saved there as model.pkl.
"""

import json
import os
import sys
import traceback

SETTINGS = json.loads({settings})


def build_pipeline(features):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import (
        MinMaxScaler,
        OneHotEncoder,
        OrdinalEncoder,
        RobustScaler,
        StandardScaler,
    )
    from {module} import {model_type} as Model

    missing = SETTINGS["missing_values"]
    numeric = features.select_dtypes(include="number").columns.tolist()
    categorical = [column for column in features.columns if column not in numeric]

    numeric_steps = []
    if missing != "none":
        numeric_steps.append(("impute", SimpleImputer(strategy=missing)))
    scalers = {{"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}}
    if SETTINGS["scaling"] in scalers:
        numeric_steps.append(("scale", scalers[SETTINGS["scaling"]]()))

    transformers = []
    if numeric:
        numeric_part = Pipeline(numeric_steps) if numeric_steps else "passthrough"
        transformers.append(("numeric", numeric_part, numeric))
    # With encoding "none", non-numeric columns are dropped: estimators cannot read text.
    if categorical and SETTINGS["encoding"] != "none":
        categorical_steps = []
        if missing != "none":
            categorical_steps.append(("impute", SimpleImputer(strategy="most_frequent")))
        if SETTINGS["encoding"] == "onehot":
            encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        else:
            encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
        categorical_steps.append(("encode", encoder))
        transformers.append(("categorical", Pipeline(categorical_steps), categorical))
    if not transformers:
        raise ValueError("No usable feature columns")

    preprocess = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
    return Pipeline([("preprocess", preprocess), ("model", Model(**SETTINGS["model_params"]))])


def classification_metrics(pipeline, x_test, y_test, predicted):
    from sklearn import metrics

    scores = {{
        "accuracy": metrics.accuracy_score(y_test, predicted),
        "precision": metrics.precision_score(
            y_test, predicted, average="weighted", zero_division=0
        ),
        "recall": metrics.recall_score(y_test, predicted, average="weighted", zero_division=0),
        "f1": metrics.f1_score(y_test, predicted, average="weighted", zero_division=0),
    }}
    classes = list(pipeline.classes_)
    try:
        if hasattr(pipeline, "predict_proba"):
            scores_matrix = pipeline.predict_proba(x_test)
        else:
            scores_matrix = pipeline.decision_function(x_test)
        if len(classes) == 2:
            positive = scores_matrix[:, 1] if scores_matrix.ndim == 2 else scores_matrix
            scores["roc_auc"] = metrics.roc_auc_score(y_test == classes[1], positive)
        elif hasattr(pipeline, "predict_proba") and set(y_test) == set(classes):
            scores["roc_auc"] = metrics.roc_auc_score(
                y_test, scores_matrix, multi_class="ovr", average="weighted", labels=classes
            )
    except (AttributeError, ValueError):
        pass  # roc_auc is not defined for this model or split
    return scores


def regression_metrics(y_test, predicted):
    from sklearn import metrics

    return {{
        "rmse": metrics.mean_squared_error(y_test, predicted) ** 0.5,
        "mae": metrics.mean_absolute_error(y_test, predicted),
        "r2": metrics.r2_score(y_test, predicted),
    }}


def write_predictions(pipeline, features, classification):
    import pandas as pd

    test = pd.read_csv(os.environ["TEST_PATH"])[list(features.columns)]
    columns = {{"prediction": pipeline.predict(test)}}
    if classification and hasattr(pipeline, "predict_proba"):
        try:
            proba = pipeline.predict_proba(test)
        except (AttributeError, ValueError):
            proba = None  # this model gives no probabilities
        if proba is not None:
            for index, name in enumerate(pipeline.classes_):
                columns[f"proba_{{name}}"] = proba[:, index]
    pd.DataFrame(columns).to_csv(os.environ["PREDICTIONS_PATH"], index=False)


def main():
    import pandas as pd
    from sklearn.model_selection import train_test_split

    holdout = SETTINGS["protocol"] == "holdout"
    data = pd.read_csv(os.environ["TRAIN_PATH"] if holdout else SETTINGS["data_file"])
    target = SETTINGS["target_column"]
    if target not in data.columns:
        raise ValueError(f"Target column not found: {{target}}")
    data = data.dropna(subset=[target])
    features = data.drop(columns=[target])
    labels = data[target]
    classification = SETTINGS["task_type"] == "classification"
    stratify = labels if classification and labels.value_counts().min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        features,
        labels,
        test_size=SETTINGS["test_size"],
        random_state=SETTINGS["random_state"],
        stratify=stratify,
    )
    pipeline = build_pipeline(features)
    pipeline.fit(x_train, y_train)
    predicted = pipeline.predict(x_test)
    if classification:
        scores = classification_metrics(pipeline, x_test, y_test, predicted)
    else:
        scores = regression_metrics(y_test, predicted)
    if holdout:
        pipeline.fit(features, labels)  # every training row, for the runner's test rows
        write_predictions(pipeline, features, classification)
    output_dir = os.environ.get("OUTPUT_DIR")
    if output_dir:
        import pickle

        with open(os.path.join(output_dir, "model.pkl"), "wb") as model_file:
            pickle.dump(pipeline, model_file)
    result = {{
        "success": True,
        "metrics": {{name: float(value) for name, value in scores.items()}},
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
    }}
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except Exception as error:
        traceback.print_exc()
        print(json.dumps({{"success": False, "error": f"{{type(error).__name__}}: {{error}}"}}))
        sys.exit(1)
'''
