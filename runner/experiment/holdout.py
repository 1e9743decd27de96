"""Held-out scoring, the host's side of the data: the split whose test labels a script
never sees, and the directory its sandbox shows instead of the script's own.

``Holdout`` names a CSV file, its target column and its task. ``Holdout.split``
reads it here, on the host, with the standard library alone: rows whose target
is empty are left out, then a seeded share of the rows is held out (stratified
for classification: each class in the same proportion), or the rows of a test
file the caller already has are. ``stage`` writes what the sandbox may see into
a new directory: a copy of the script, ``train.csv`` (the training rows, target
included) and ``test.csv`` (the test rows without the target column), each
value as the data file spells it. The labels of the test rows stay here; the
runner's scorer gets them after the script's sandbox is gone
(``runner.experiment.scoring``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import random
import re
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import HoldoutRecord, TaskType
from runner.sandbox.artifacts import OUTPUTS_PATH

#: Bytes of a data (or test) file the host reads whole.
MAX_DATA_BYTES = 1024**3
#: What the sandbox shows beside the script, and where the script writes its predictions.
TRAIN_NAME = "train.csv"
TEST_NAME = "test.csv"
PREDICTIONS_NAME = "predictions.csv"
PREDICTIONS_PATH = OUTPUTS_PATH / PREDICTIONS_NAME
#: A number as the data file may spell one (no "nan", "inf" or digit separators).
NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Holdout:
    """Score a run on rows whose labels its script never sees.

    ``data``: a CSV file with a header row and ``target_column``. Without
    ``test_data`` the runner holds ``test_size`` of its rows out, chosen with
    ``seed`` (stratified for classification); with ``test_data`` (a CSV file
    with the same columns) every row of ``data`` trains and every row of
    ``test_data`` is scored.
    """

    data: Path
    target_column: str
    task_type: TaskType
    test_size: float = 0.25
    seed: int = 0
    test_data: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data).expanduser().resolve())
        if self.test_data is not None:
            object.__setattr__(self, "test_data", Path(self.test_data).expanduser().resolve())
        if self.task_type not in _TASKS:
            raise ValueError(
                f"task_type must be 'classification' or 'regression', not {self.task_type!r}"
            )
        if not self.target_column:
            raise ValueError("target_column must name a column")
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size must be between 0 and 1, not {self.test_size}")

    @property
    def files(self) -> tuple[Path, ...]:
        """The files holding labels the sandbox must never see."""
        return (self.data,) if self.test_data is None else (self.data, self.test_data)

    def split(self) -> Split:
        """Read the data and hold the test rows out; ``ExperimentExecutionError`` says what
        is wrong with the files."""
        table = Table.read(self.data)
        target = table.column(self.target_column)
        kept = [row for row in table.rows if row[target].strip()]
        dropped = len(table.rows) - len(kept)
        if self.test_data is None:
            if len(kept) < 2:
                raise _bad(self.data, "it needs at least two rows with a target to split")
            labels = [row[target] for row in kept]
            held = set(test_indices(labels, self.task_type, self.test_size, self.seed))
            train = [row for i, row in enumerate(kept) if i not in held]
            test = [row for i, row in enumerate(kept) if i in held]
            if not test:
                raise _bad(
                    self.data,
                    f"holding {self.test_size:g} of its rows out leaves no test row (each "
                    "class keeps one training row); pass more rows or a larger test_size",
                )
            indices = sorted(held)
            test_digest = None
        else:
            given = Table.read(self.test_data)
            if given.header != table.header:
                raise _bad(
                    self.test_data,
                    f"its columns ({_names(given.header)}) are not the data file's "
                    f"({_names(table.header)}), in the same order",
                )
            for number, row in enumerate(given.rows, 1):
                if not row[target].strip():
                    raise _bad(self.test_data, f"test row {number} has no {self.target_column}")
            train, test = kept, given.rows
            if not train or not test:
                raise _bad(self.test_data if not test else self.data, "it has no rows")
            indices = list(range(len(test)))
            test_digest = given.sha256
        if self.task_type == "regression":
            _check_numbers(train + test, target, self.target_column, self.data)
        classes = (
            sort_classes({row[target] for row in train + test})
            if self.task_type == "classification"
            else ()
        )
        record = HoldoutRecord(
            target_column=self.target_column,
            task_type=self.task_type,
            test_size=self.test_size if self.test_data is None else None,
            seed=self.seed if self.test_data is None else None,
            train_rows=len(train),
            test_rows=len(test),
            dropped_rows=dropped,
            test_rows_sha256=indices_sha256(indices),
            data_sha256=table.sha256,
            test_data_sha256=test_digest,
            classes=list(classes),
        )
        return Split(table.header, target, train, test, classes, record)


@dataclass(frozen=True)
class Table:
    """A CSV file read strictly: a header of distinct names, every row as long."""

    header: list[str]
    rows: list[list[str]]
    sha256: str

    @classmethod
    def read(cls, path: Path) -> Table:
        try:
            with path.open("rb") as f:
                data = f.read(MAX_DATA_BYTES + 1)
        except OSError as e:
            raise ExperimentExecutionError(
                f"The held-out data file cannot be read: {e}",
                hint="pass an existing CSV file with a header row.",
            ) from e
        if len(data) > MAX_DATA_BYTES:
            raise _bad(path, f"it is over {MAX_DATA_BYTES} bytes")
        try:
            text = data.decode("utf-8-sig")
            rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
        except (UnicodeDecodeError, csv.Error) as e:
            raise _bad(path, f"it is not UTF-8 CSV ({e})") from e
        if not rows:
            raise _bad(path, "it is empty")
        header, body = rows[0], [row for row in rows[1:] if row]
        if len(set(header)) != len(header):
            raise _bad(path, "its header names a column twice")
        for number, row in enumerate(body, 1):
            if len(row) != len(header):
                raise _bad(path, f"row {number} has {len(row)} fields, the header {len(header)}")
        return cls(header, body, hashlib.sha256(data).hexdigest())

    def column(self, name: str) -> int:
        if name not in self.header:
            raise ExperimentExecutionError(
                f"The target column {name!r} is not in the held-out data (columns: "
                f"{_names(self.header)}).",
                hint="pass --target (target_column) as the header spells it.",
            )
        return self.header.index(name)


@dataclass(frozen=True)
class Split:
    """The data, split: the training rows, and the test rows whose labels stay here."""

    header: list[str]
    #: The target's position in ``header`` (and in every row).
    target: int
    train: list[list[str]]
    test: list[list[str]]
    #: For classification, every class the data holds (``sort_classes``).
    classes: tuple[str, ...]
    record: HoldoutRecord

    @property
    def labels(self) -> list[str]:
        """The test rows' targets, in order: what only the scorer sees."""
        return [row[self.target] for row in self.test]


def test_indices(labels: Sequence[str], task: TaskType, test_size: float, seed: int) -> list[int]:
    """The positions of the rows to hold out, in order.

    ``ceil(test_size * n)`` rows, as scikit-learn rounds a test share. For
    classification each class gives its share (largest remainders first) and
    keeps at least one training row; within a class, and for regression among
    all rows, ``random.Random(seed)`` chooses.
    """
    rng = random.Random(seed)  # noqa: S311 - a reproducible split, not a secret
    wanted = math.ceil(test_size * len(labels))
    if task == "regression":
        order = list(range(len(labels)))
        rng.shuffle(order)
        return sorted(order[:wanted])
    groups: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    classes = sort_classes(groups)
    exact = {c: wanted * len(groups[c]) / len(labels) for c in classes}
    share = {c: math.floor(exact[c]) for c in classes}
    by_remainder = sorted(classes, key=lambda c: (share[c] - exact[c], classes.index(c)))
    for c in by_remainder[: wanted - sum(share.values())]:
        share[c] += 1
    held: list[int] = []
    for c in classes:
        members = list(groups[c])
        rng.shuffle(members)
        held += members[: min(share[c], len(members) - 1)]
    return sorted(held)


def sort_classes(classes: Iterable[str]) -> tuple[str, ...]:
    """Classes in scikit-learn's order: by value when all are numbers, else as text."""
    names = list(classes)
    if names and all(NUMBER.match(name) for name in names):
        return tuple(sorted(names, key=lambda name: (float(name), name)))
    return tuple(sorted(names))


def indices_sha256(indices: Sequence[int]) -> str:
    """SHA-256 of the indices in decimal, each followed by a newline."""
    return hashlib.sha256("".join(f"{i}\n" for i in indices).encode()).hexdigest()


@dataclass(frozen=True)
class Staged:
    """What a held-out run's sandbox shows: the script's copy, ``train.csv``, ``test.csv``."""

    directory: Path
    script: Path
    train: Path = field(init=False)
    test: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", self.directory / TRAIN_NAME)
        object.__setattr__(self, "test", self.directory / TEST_NAME)

    def environment(self) -> tuple[tuple[str, str], ...]:
        """The protocol's variables, as the sandbox shows the files (at their own paths)."""
        return (
            ("TRAIN_PATH", str(self.train)),
            ("TEST_PATH", str(self.test)),
            ("PREDICTIONS_PATH", str(PurePosixPath(PREDICTIONS_PATH))),
        )


def stage(split: Split, script: Path, directory: Path) -> Staged:
    """Write the script's copy, ``train.csv`` and ``test.csv`` into the new ``directory``,
    readable by the sandbox's user; nothing else goes there."""
    if script.name in (TRAIN_NAME, TEST_NAME):
        raise ExperimentExecutionError(
            f"A held-out run's script may not be called {script.name}.",
            hint="rename the script.",
        )
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    staged = Staged(directory, directory / script.name)
    _copy_script(script, staged.script)
    features = [i for i in range(len(split.header)) if i != split.target]
    _write_csv(staged.train, split.header, split.train)
    _write_csv(
        staged.test,
        [split.header[i] for i in features],
        [[row[i] for i in features] for row in split.test],
    )
    return staged


def refuse_leaks(holdout: Holdout, mounts: Sequence[Path]) -> None:
    """Refuse an input that is, holds or is a hard link of a file with labels."""
    for path in mounts:
        for labelled in holdout.files:
            same = path.is_file() and labelled.exists() and path.samefile(labelled)
            if same or labelled == path or labelled.is_relative_to(path):
                raise ExperimentExecutionError(
                    f"The input {path} holds the held-out data ({labelled}): the script "
                    "would see the test labels.",
                    hint="pass the data with holdout= (--holdout) alone; the script reads "
                    "$TRAIN_PATH and $TEST_PATH.",
                )


def _copy_script(source: Path, target: Path) -> None:
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise ExperimentExecutionError(
                f"The script {source} is not a regular file.", hint="pass a Python file."
            )
        with _new_file(target) as dst:
            shutil.copyfileobj(src, dst)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with _new_file(path) as f, io.TextIOWrapper(f, encoding="utf-8", newline="") as text:
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _new_file(path: Path) -> io.BufferedWriter:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.fchmod(fd, 0o644)  # whatever the umask: the sandbox's user reads it
    return os.fdopen(fd, "wb")


def _check_numbers(rows: list[list[str]], target: int, name: str, path: Path) -> None:
    for row in rows:
        if not NUMBER.match(row[target]):
            raise _bad(
                path,
                f"a regression target must be a finite number, and {name} is "
                f"{row[target][:40]!r} in one of its rows",
            )


def _names(header: Sequence[str]) -> str:
    shown = ", ".join(repr(name[:40]) for name in header[:20])
    return shown + (f" and {len(header) - 20} more" if len(header) > 20 else "")


def _bad(path: Path, why: str) -> ExperimentExecutionError:
    return ExperimentExecutionError(
        f"The held-out data {path} cannot be used: {why}.",
        hint="pass a UTF-8 CSV file with a header row and one row per sample.",
    )
