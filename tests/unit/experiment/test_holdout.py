"""The held-out split on the host, the strict reading of predictions, and the generated
scripts of the protocol (run here on the host's Python, as the sandbox would)."""

from __future__ import annotations

import collections
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runner import CodeGenerator, ExperimentExecutionError, ExperimentSpec, Holdout
from runner.cli.demo import TARGET, demo_data
from runner.experiment.holdout import Split, indices_sha256, refuse_leaks, stage
from runner.experiment.predictions import (
    MAX_PREDICTIONS_BYTES,
    PredictionsRefused,
    read_predictions,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def classes(tmp_path: Path) -> Path:
    """40 rows: 30 of class 'a', 10 of class 'b', and one without a label."""
    rows = [f"{i},{'a' if i % 4 else 'b'}" for i in range(40)]
    return write(tmp_path / "data.csv", "x,label\n" + "\n".join(rows) + "\n7,\n")


def split_of(data: Path, **given: object) -> Split:
    return Holdout(data, "label", "classification", **given).split()  # type: ignore[arg-type]


def test_the_split_is_stratified_seeded_and_digested(classes: Path) -> None:
    """A quarter of the labelled rows, each class in proportion, the same for the same
    seed, another for another; the test rows' indices are digested, the empty label
    dropped."""
    split = split_of(classes, test_size=0.25, seed=1)
    assert collections.Counter(split.labels) == {"a": 8, "b": 2}
    assert len(split.train) == 30 and split.record.dropped_rows == 1
    assert split.record.classes == ["a", "b"]
    again, other = split_of(classes, test_size=0.25, seed=1), split_of(classes, seed=2)
    assert again.test == split.test and other.test != split.test
    held = [int(row[0]) for row in split.test]  # x is the row's index here
    assert split.record.test_rows_sha256 == indices_sha256(sorted(held))


def test_a_test_file_scores_its_own_rows(classes: Path, tmp_path: Path) -> None:
    """With test_data every labelled row trains and every row of the test file is scored;
    a test file with other columns is refused."""
    test = write(tmp_path / "test.csv", "x,label\n100,a\n101,b\n")
    split = Holdout(classes, "label", "classification", test_data=test).split()
    assert split.labels == ["a", "b"] and len(split.train) == 40
    assert split.record.test_data_sha256 is not None and split.record.seed is None
    other = write(tmp_path / "other.csv", "label,x\na,1\n")
    with pytest.raises(ExperimentExecutionError, match="columns"):
        Holdout(classes, "label", "classification", test_data=other).split()


@pytest.mark.parametrize(
    ("text", "target", "task", "why"),
    [
        ("x,label\n1,a\n", "nope", "classification", "not in the held-out data"),
        ("x,x\n1,2\n", "x", "classification", "names a column twice"),
        ("x,label\n1\n", "label", "classification", "row 1 has 1 fields"),
        ("x,label\n1,a\n2,nan\n", "label", "regression", "finite number"),
    ],
)
def test_bad_data_is_the_callers_error(
    tmp_path: Path, text: str, target: str, task: str, why: str
) -> None:
    """A data file the runner cannot split raises, saying why (the caller's mistake)."""
    data = write(tmp_path / "data.csv", text)
    with pytest.raises(ExperimentExecutionError, match=why):
        Holdout(data, target, task).split()  # type: ignore[arg-type]


def test_the_stage_holds_no_target(classes: Path, tmp_path: Path) -> None:
    """The sandbox's directory holds the script's copy, the training rows and the test
    rows' features only, each readable by the sandbox's user."""
    split = split_of(classes)
    script = write(tmp_path / "exp.py", "print(1)\n")
    staged = stage(split, script, tmp_path / "stage")
    assert sorted(p.name for p in staged.directory.iterdir()) == ["exp.py", "test.csv", "train.csv"]
    assert staged.test.read_text().splitlines()[0] == "x"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in staged.directory.iterdir())
    assert dict(staged.environment())["PREDICTIONS_PATH"] == "/outputs/predictions.csv"


def test_an_input_holding_the_data_is_refused(classes: Path, tmp_path: Path) -> None:
    """The data file, its directory or a hard link of it as an input would show the labels."""
    holdout = Holdout(classes, "label", "classification")
    link = tmp_path / "sub"
    link.mkdir()
    os.link(classes, link / "copy.csv")
    for leak in (classes, tmp_path, link / "copy.csv"):
        with pytest.raises(ExperimentExecutionError, match="held-out data"):
            refuse_leaks(holdout, [leak])
    refuse_leaks(holdout, [link / "nothing"])


def predictions(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "predictions.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_valid_predictions_become_a_scoring_task(classes: Path, tmp_path: Path) -> None:
    """Classes by name (an index column pandas writes too), probabilities scaled to 1."""
    split = split_of(classes)
    rows = "".join(f"{i},{label},0.7,0.3\n" for i, label in enumerate(split.labels))
    task = read_predictions(predictions(tmp_path, ",prediction,proba_a,proba_b\n" + rows), split)
    assert task.y_pred == task.y_true == [0 if c == "a" else 1 for c in split.labels]
    assert task.proba is not None and task.proba[0] == pytest.approx([0.7, 0.3])


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("guess\n" + "a\n" * 10, "one 'prediction' column"),
        ("prediction\na\n", "1 row(s) for 10 test row(s)"),
        ("prediction\n" + "c\n" * 10, "'c', not one of the classes"),
        ("prediction\n" + "\n" * 10, "row 1 has 0 field(s)"),
        ("prediction,proba_a\n" + "a,1\n" * 10, "missing for 'b'"),
        ("prediction,proba_a,proba_b\n" + "a,nan,0\n" * 10, "NaN"),
        ("prediction,proba_a,proba_b\n" + "a,0.9,0.9\n" * 10, "sum to 1.8"),
        ("prediction,extra\n" + "a,1\n" * 10, "unexpected column"),
        (b"prediction\n\xff\n", "not UTF-8"),
        ("prediction\n" + "a\n" * 9 + '"a', "not valid CSV"),
    ],
)
def test_bad_predictions_are_refused_naming_them(
    classes: Path, tmp_path: Path, text: str | bytes, why: str
) -> None:
    """Each fault is a PredictionsRefused naming $PREDICTIONS_PATH and what is wrong."""
    with pytest.raises(PredictionsRefused, match=r"\$PREDICTIONS_PATH") as refused:
        read_predictions(predictions(tmp_path, text), split_of(classes))
    assert why in str(refused.value)


def test_regression_predictions_must_be_finite_numbers(tmp_path: Path) -> None:
    """NaN, infinity, text and a number too large for a float are named by row."""
    data = write(tmp_path / "data.csv", "x,y\n" + "".join(f"{i},{i}.5\n" for i in range(8)))
    split = Holdout(data, "y", "regression", test_size=0.5).split()
    for bad, why in (("nan", "NaN"), ("-inf", "infinity"), ("abc", "not a number"),
                     ("1e999", "too large")):  # fmt: skip
        text = "prediction\n" + "1.0\n" * 3 + bad + "\n"
        with pytest.raises(PredictionsRefused, match="row 4") as refused:
            read_predictions(predictions(tmp_path, text), split)
        assert why in str(refused.value)
    task = read_predictions(predictions(tmp_path, "prediction\n1\n2\n3\n4\n"), split)
    assert task.y_pred == [1.0, 2.0, 3.0, 4.0]


def test_oversized_or_odd_files_are_refused_before_they_are_read(
    classes: Path, tmp_path: Path
) -> None:
    """A file over the cap, a symlink or a FIFO is refused without reading it."""
    split = split_of(classes)
    big = predictions(tmp_path, "prediction\n")
    with big.open("ab") as f:
        f.truncate(MAX_PREDICTIONS_BYTES + 1)
    with pytest.raises(PredictionsRefused, match="over the limit"):
        read_predictions(big, split)
    link = tmp_path / "link.csv"
    link.symlink_to(classes)
    with pytest.raises(PredictionsRefused, match="cannot be opened"):
        read_predictions(link, split)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    with pytest.raises(PredictionsRefused, match="not a regular file"):
        read_predictions(fifo, split)
    with pytest.raises(PredictionsRefused, match="wrote none"):
        read_predictions(None, split)


def test_a_generated_script_of_the_protocol_predicts_every_test_row(tmp_path: Path) -> None:
    """CodeGenerator(holdout=True) writes no copy of the data; the script trains on
    $TRAIN_PATH, reports its own metrics and writes valid predictions with probabilities."""
    spec = ExperimentSpec(experiment_name="lr", model_type="LogisticRegression",
                          model_params={"max_iter": 500})  # fmt: skip
    script = CodeGenerator(tmp_path / "gen").generate(
        spec, demo_data(), TARGET, "classification", holdout=True
    )
    assert sorted(p.name for p in script.parent.iterdir()) == ["experiment.py", "spec.json"]
    split = Holdout(demo_data(), TARGET, "classification").split()
    staged = stage(split, script, tmp_path / "stage")
    out = tmp_path / "predictions.csv"
    environment = {**os.environ, **dict(staged.environment()), "PREDICTIONS_PATH": str(out)}
    done = subprocess.run(
        [sys.executable, str(staged.script)], env=environment, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"accuracy"' in done.stdout
    task = read_predictions(out, split)
    assert len(task.y_pred) == len(split.test) and task.proba is not None


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_scorer_computes_scikit_learns_metrics(tmp_path: Path, task: str) -> None:
    """The scorer's program (run here on the host's Python) gives scikit-learn's own
    numbers: weighted precision, recall, f1 and roc_auc, or rmse, mae and r2."""
    import json
    import random

    from sklearn import metrics

    from runner.experiment.scorer import SOURCE

    rng = random.Random(1)  # noqa: S311 - test data, not a secret
    if task == "classification":
        y_true = [rng.randrange(2) for _ in range(100)]
        y_pred = [rng.randrange(2) for _ in range(100)]
        ones = [rng.random() for _ in range(100)]
        proba: list[list[float]] | None = [[1 - p, p] for p in ones]
        expected = {
            "accuracy": metrics.accuracy_score(y_true, y_pred),
            "roc_auc": metrics.roc_auc_score(y_true, ones),
            **{name: f(y_true, y_pred, average="weighted", zero_division=0)
               for name, f in (("precision", metrics.precision_score),
                               ("recall", metrics.recall_score), ("f1", metrics.f1_score))},
        }  # fmt: skip
    else:
        y_true = [rng.gauss(0, 1) for _ in range(50)]
        y_pred = [rng.gauss(0, 1) for _ in range(50)]
        proba = None
        expected = {
            "rmse": metrics.mean_squared_error(y_true, y_pred) ** 0.5,
            "mae": metrics.mean_absolute_error(y_true, y_pred),
            "r2": metrics.r2_score(y_true, y_pred),
        }
    (tmp_path / "score.py").write_text(SOURCE)
    task_file = {"task_type": task, "classes": ["0", "1"], "y_true": y_true,
                 "y_pred": y_pred, "proba": proba}  # fmt: skip
    (tmp_path / "task.json").write_text(json.dumps(task_file))
    done = subprocess.run(
        [sys.executable, str(tmp_path / "score.py")], capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    scores = json.loads(done.stdout)["metrics"]
    assert scores == pytest.approx(expected, rel=1e-12)
