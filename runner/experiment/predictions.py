"""A script's predictions, read as the hostile input they are.

The script writes ``$PREDICTIONS_PATH``: a CSV file with a header, a
``prediction`` column and one row per test row, in the order of ``test.csv``;
for classification, optionally one ``proba_<class>`` column per class (all of
them), for ranking metrics. A leading unnamed column (the index pandas writes
unless told ``index=False``) is allowed when it counts 0, 1, 2, ...

``read_predictions`` takes the file as the outputs brought it back (a regular
file, within the outputs' limits) and checks everything before a number of it
reaches the scorer: its size, UTF-8, the CSV, the columns, the row count, each
value (a class of the data, or a finite number; probabilities finite, in
[0, 1], summing to 1 within ``SUM_TOLERANCE``). Any fault is a
``PredictionsRefused`` saying what and where; nothing here raises anything else.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.core.models import TaskType
from runner.experiment.holdout import NUMBER, PREDICTIONS_NAME, Split

#: The largest predictions file read (the outputs' own per-file cap may be larger).
MAX_PREDICTIONS_BYTES = 64 * 1024**2
#: How far a row of probabilities may sum from 1 (they are scaled to 1 for the scorer).
SUM_TOLERANCE = 0.01
PREDICTION = "prediction"
PROBA = "proba_"
#: Faults listed in one message; the rest are counted.
SHOWN = 5
_NOT_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
_INDEX_NAMES = ("", "Unnamed: 0")


class PredictionsRefused(Exception):
    """The predictions cannot be scored; the message says why, naming them."""


@dataclass(frozen=True)
class ScoringTask:
    """What the scorer gets: the labels and the predictions, checked, as numbers.

    For classification, classes are their positions in ``classes`` and each row
    of ``proba`` sums to 1; for regression, values are finite floats.
    """

    task_type: TaskType
    classes: tuple[str, ...]
    y_true: list[int] | list[float]
    y_pred: list[int] | list[float]
    proba: list[list[float]] | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "task_type": self.task_type,
                "classes": list(self.classes),
                "y_true": self.y_true,
                "y_pred": self.y_pred,
                "proba": self.proba,
            },
            allow_nan=False,
        )


def read_predictions(
    path: Path | None, split: Split, *, limit: int = MAX_PREDICTIONS_BYTES
) -> ScoringTask:
    """The scoring task for the predictions at ``path`` (None: none came back)."""
    if path is None:
        raise _refused("the script wrote none (no file at $PREDICTIONS_PATH)")
    text = _text(path, limit)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as e:
        raise _refused(f"not valid CSV ({e})") from e
    if not rows:
        raise _refused("the file is empty; it needs a header row with a 'prediction' column")
    header, body = [name.strip() for name in rows[0]], rows[1:]
    expected = len(split.test)
    if len(body) != expected:
        raise _refused(
            f"{len(body)} row(s) for {expected} test row(s); write one prediction per row of "
            "$TEST_PATH, in its order"
        )
    columns = _columns(header, split)
    faults: list[str] = []
    for number, row in enumerate(body, 1):
        if len(row) != len(header):
            faults.append(f"row {number} has {len(row)} field(s), the header {len(header)}")
    _raise_faults(faults)
    if columns.index is not None:
        _check_index(body, columns.index)
    if split.record.task_type == "regression":
        return _regression(body, columns.prediction, split)
    return _classification(body, columns, split)


@dataclass(frozen=True)
class _Columns:
    prediction: int
    #: Per class (in ``split.classes``' order), its column, when probabilities are given.
    proba: list[int] | None
    index: int | None


def _text(path: Path, limit: int) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise _refused(f"the file cannot be opened ({e.strerror})") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _refused("it is not a regular file")
        if st.st_size > limit:
            raise _refused(f"the file has {st.st_size} bytes, over the limit of {limit}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _refused(f"the file is over the limit of {limit} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _refused(f"it is not UTF-8 text (byte {e.start})") from e


def _columns(header: list[str], split: Split) -> _Columns:
    if header.count(PREDICTION) != 1:
        raise _refused(f"the header needs one {PREDICTION!r} column; it has {_shown(header)}")
    index = 0 if header and header[0] in _INDEX_NAMES else None
    probabilities: dict[int, int] = {}
    unknown: list[str] = []
    classes = _Classes(split.classes)
    for position, name in enumerate(header):
        if name == PREDICTION or position == index:
            continue
        found = classes.find(name.removeprefix(PROBA)) if name.startswith(PROBA) else None
        if split.record.task_type != "classification" or found is None:
            unknown.append(name)
        elif found in probabilities:
            raise _refused(f"two columns give the probability of {split.classes[found]!r}")
        else:
            probabilities[found] = position
    if unknown:
        allowed = (
            PREDICTION
            if split.record.task_type == "regression"
            else (f"{PREDICTION} and {PROBA}<class> for each class ({_shown(split.classes)})")
        )
        raise _refused(f"unexpected column(s) {_shown(unknown)}; allowed: {allowed}")
    if probabilities and len(probabilities) != len(split.classes):
        missing = [c for i, c in enumerate(split.classes) if i not in probabilities]
        raise _refused(f"probabilities are missing for {_shown(missing)} (give all or none)")
    proba = [probabilities[i] for i in range(len(split.classes))] if probabilities else None
    return _Columns(header.index(PREDICTION), proba, index)


def _check_index(body: list[list[str]], column: int) -> None:
    for number, row in enumerate(body):
        value = row[column].strip()
        if not value.isdigit() or int(value) != number:
            raise _refused(
                f"its unnamed first column (an index?) says {value[:20]!r} in row {number + 1}; "
                "it must count 0, 1, 2, ... (or write the file with index=False)"
            )


class _Classes:
    """Finds a class by its text, or by its value where the classes are numbers (a
    prediction of ``1.0`` for the class ``1``)."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.by_text = {c: i for i, c in enumerate(classes)}
        values: dict[float, list[int]] = {}
        for i, c in enumerate(classes):
            if NUMBER.match(c):
                values.setdefault(float(c), []).append(i)
        self.by_value = {v: ix[0] for v, ix in values.items() if len(ix) == 1}

    def find(self, text: str) -> int | None:
        for candidate in (text, text.strip()):
            if candidate in self.by_text:
                return self.by_text[candidate]
        if NUMBER.match(text):
            return self.by_value.get(float(text))
        return None


def _classification(body: list[list[str]], columns: _Columns, split: Split) -> ScoringTask:
    classes = _Classes(split.classes)
    truth = [classes.find(label) for label in split.labels]
    predicted: list[int] = []
    faults: list[str] = []
    for number, row in enumerate(body, 1):
        value = row[columns.prediction]
        found = classes.find(value)
        if found is None:
            what = "empty" if not value.strip() else f"{value[:40]!r}, not one of the classes"
            faults.append(f"row {number}: {what}")
        else:
            predicted.append(found)
    if faults:
        faults[0] += f" ({_shown(split.classes)})"
    _raise_faults(faults)
    proba = _probabilities(body, columns.proba) if columns.proba is not None else None
    return ScoringTask(
        "classification",
        split.classes,
        [t for t in truth if t is not None],
        predicted,
        proba,
    )


def _probabilities(body: list[list[str]], positions: list[int]) -> list[list[float]]:
    rows: list[list[float]] = []
    faults: list[str] = []
    for number, row in enumerate(body, 1):
        values: list[float] = []
        for position in positions:
            number_or_fault = _number(row[position])
            if isinstance(number_or_fault, str):
                faults.append(f"row {number}, probability {number_or_fault}")
                break
            if not 0.0 <= number_or_fault <= 1.0:
                faults.append(f"row {number}: a probability of {number_or_fault:g}, not in [0, 1]")
                break
            values.append(number_or_fault)
        else:
            total = math.fsum(values)
            if abs(total - 1.0) > SUM_TOLERANCE:
                faults.append(f"row {number}: probabilities sum to {total:g}, not 1")
            else:
                rows.append([v / total for v in values])
    _raise_faults(faults)
    return rows


def _regression(body: list[list[str]], column: int, split: Split) -> ScoringTask:
    predicted: list[float] = []
    faults: list[str] = []
    for number, row in enumerate(body, 1):
        value = _number(row[column])
        if isinstance(value, str):
            faults.append(f"row {number}: {value}")
        else:
            predicted.append(value)
    _raise_faults(faults)
    truth = [float(label) for label in split.labels]
    return ScoringTask("regression", (), truth, predicted)


def _number(text: str) -> float | str:
    """A finite number, or what is wrong with ``text``."""
    if NUMBER.match(text):
        value = float(text)
        if math.isfinite(value):
            return value
        return f"{text.strip()[:40]!r} is too large for a float"
    if not text.strip():
        return "empty"
    if text.strip().lower() in _NOT_FINITE:
        return f"{text.strip()!r} (NaN and infinity are no predictions)"
    return f"{text[:40]!r} is not a number"


def _raise_faults(faults: list[str]) -> None:
    if not faults:
        return
    more = f"; and {len(faults) - SHOWN} more" if len(faults) > SHOWN else ""
    raise _refused("; ".join(faults[:SHOWN]) + more)


def _shown(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name[:40]) for name in list(names)[:10])
    return (shown or "none") + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _refused(why: str) -> PredictionsRefused:
    return PredictionsRefused(
        f"Invalid predictions ($PREDICTIONS_PATH, {PREDICTIONS_NAME}): {why}."
    )
