"""Held-out scoring with real sandboxes: the runner's scores, not the script's claims.

They run in every pass (runc, runsc, Docker-in-Docker, Podman), so they are few:
each run is one sandbox for the script and one for the scorer.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner import ExperimentRunner, Holdout
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import SPEC

#: A script of the protocol: it trains on $TRAIN_PATH and predicts each row of $TEST_PATH.
HONEST = """
import json, os
import pandas as pd
from sklearn.linear_model import LogisticRegression
train = pd.read_csv(os.environ["TRAIN_PATH"])
test = pd.read_csv(os.environ["TEST_PATH"])
model = LogisticRegression().fit(train[["x", "y"]], train["label"])
pd.DataFrame({"prediction": model.predict(test[["x", "y"]])}).to_csv(
    os.environ["PREDICTIONS_PATH"], index=False
)
print(json.dumps({"success": True, "metrics": {"cv_accuracy": 0.9}}))
"""

#: It claims a perfect score and predicts one class for every row.
LIAR = """
import json, os
rows = open(os.environ["TEST_PATH"]).read().splitlines()[1:]
with open(os.environ["PREDICTIONS_PATH"], "w") as f:
    f.write("prediction\\n" + "cat\\n" * len(rows))
print(json.dumps({"success": True, "metrics": {"accuracy": 1.0}}))
"""

#: Looks at every name and reads every file it can outside the image's own read-only root
#: file system (anything the runner could have put in: every mount, /tmp, /outputs), and
#: says which hold the data's file name, its bytes, or a test row with its label (a line
#: of the data file that only a leak could show).
SEARCH = """
import json, os, sys
needles = [bytes.fromhex(n) for n in sys.argv[1:]]
image = os.stat("/").st_dev
found, looked, read = [], 0, []
for top in os.listdir("/"):
    if top in ("proc", "sys", "dev"):
        continue
    for here, dirs, files in os.walk("/" + top, onerror=lambda e: None):
        for name in dirs + files:
            looked += 1
            if needles[0] in name.encode():
                found.append(os.path.join(here, name))
        for name in files:
            path = os.path.join(here, name)
            try:
                if os.stat(path).st_dev == image:
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            read.append(path)
            if any(n in data for n in needles):
                found.append(path)
rows = open(os.environ["TEST_PATH"]).read().splitlines()[1:]
with open(os.environ["PREDICTIONS_PATH"], "w") as f:
    f.write("prediction\\n" + "cat\\n" * len(rows))
print(json.dumps({"found": found, "looked": looked, "read": read}))
"""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two well-separated classes, 'cat' and 'dog', in a file of a name no sandbox shows."""
    rng = random.Random(7)  # noqa: S311 - test data, not a secret
    directory = tmp_path / "private"
    directory.mkdir()
    path = directory / "secret-labels-5f1e9c.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["x", "y", "label"])
        for i in range(80):
            label = "cat" if i % 2 else "dog"
            centre = 0.0 if label == "cat" else 4.0
            writer.writerow(
                [f"{centre + rng.gauss(0, 0.5):.6f}", f"{centre + rng.gauss(0, 0.5):.6f}", label]
            )
    return path


@pytest.fixture
def holdout(data: Path) -> Holdout:
    return Holdout(data, "label", "classification", test_size=0.25, seed=3)


@pytest.fixture
def runner(engine: DockerEngine) -> Iterator[ExperimentRunner]:
    """A cold runner, closed after the test: closing waits for the scorer's container,
    which is removed in the background once its result is in."""
    with ExperimentRunner(timeout=60, engine=engine) as runner:
        yield runner


@pytest.fixture(params=["cold", "warm"])
def held_out_runner(
    request: pytest.FixtureRequest, engine: DockerEngine, tmp_path: Path
) -> Iterator[ExperimentRunner]:
    """A runner cold, or with a warm pool (which then also keeps slots for the held-out
    scripts and the scorer)."""
    if request.param == "cold":
        with ExperimentRunner(timeout=60, engine=engine) as runner:
            yield runner
        return
    root = tmp_path / "pool"
    root.mkdir(mode=0o755)
    preload = ("pandas", "sklearn.linear_model")
    with ExperimentRunner(
        timeout=60, engine=engine, warm_pool=1, pool_root=root, preload=preload
    ) as runner:
        yield runner


def test_an_honest_script_is_scored_by_the_runner(
    held_out_runner: ExperimentRunner,
    holdout: Holdout,
    write_script: Callable[..., Path],
) -> None:
    """The script's predictions are scored on the held-out rows; its own numbers are kept
    apart; warm, the script and the scorer come from slots the pool keeps."""
    runner = held_out_runner
    script = write_script(HONEST)
    if runner.warm_pool_size:
        runner.run(script, SPEC, 0, holdout=holdout)  # the first asks for the kept slots
        assert runner.wait_for_warm(120)
    result = runner.run(script, SPEC, 0, holdout=holdout)
    assert result.success, result.error_message or result.stderr
    assert result.metrics_source == "holdout" and result.verified
    assert result.metrics["accuracy"] >= 0.9
    assert set(result.metrics) == {"accuracy", "precision", "recall", "f1"}
    assert result.reported_metrics == {"cv_accuracy": 0.9}
    assert result.holdout is not None and result.holdout.test_rows == 20
    assert result.holdout.scoring_time is not None
    assert result.warm_start == bool(runner.warm_pool_size)
    assert result.code_path == str(script)
    # A held-out result carries its provenance too: the caller's script, the split's files.
    prov = result.provenance
    assert result.run_id and prov is not None
    assert prov.script_path == str(script)
    assert prov.script_sha256 == hashlib.sha256(script.read_bytes()).hexdigest()
    assert prov.image_id == result.image_id and prov.limits.timeout == 60


def test_a_claim_of_a_perfect_score_gets_the_real_one(
    runner: ExperimentRunner, holdout: Holdout, write_script: Callable[..., Path]
) -> None:
    """A script that prints accuracy 1.0 and predicts one class gets the share of that
    class among the test rows, its claim kept in reported_metrics."""
    split = holdout.split()
    real = split.labels.count("cat") / len(split.labels)
    result = runner.run(write_script(LIAR), SPEC, 0, holdout=holdout)
    assert result.success, result.error_message
    assert result.metrics["accuracy"] == pytest.approx(real)
    assert result.reported_metrics == {"accuracy": 1.0}
    assert result.get_primary_metric("accuracy") == pytest.approx(0.5)


def test_a_search_of_the_whole_file_system_finds_no_labels(
    runner: ExperimentRunner, data: Path, holdout: Holdout, write_script: Callable[..., Path]
) -> None:
    """Neither the data file (by name or bytes) nor a test row with its label is anywhere
    the script can read, though the data lay beside it."""
    split = holdout.split()
    beside = write_script(SEARCH).parent / data.name
    beside.write_bytes(data.read_bytes())  # a data file beside the script is never shown
    beside.chmod(0o644)
    rows = [",".join(row) + "\n" for row in split.test]
    needles = [data.name.encode(), data.read_bytes(), *(r.encode() for r in rows)]
    script = beside.parent / "script.py"
    result = runner.run(script, SPEC, 0, args=[n.hex() for n in needles], holdout=holdout)
    assert result.success, result.error_message or result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["looked"] > 1000  # it did look around, and read what it was given
    assert {"train.csv", "test.csv"} <= {Path(path).name for path in report["read"]}
    assert report["found"] == []


@pytest.mark.parametrize(
    ("predictions", "why"),
    [
        (None, "wrote none"),
        ("prediction\ncat\n", "1 row(s) for 20 test row(s)"),
        ("prediction\n" + "nan\n" * 20, "not one of the classes"),
        ("oversized", "over the limit"),
    ],
    ids=["missing", "short", "nan", "oversized"],
)
def test_bad_predictions_fail_naming_the_predictions(
    runner: ExperimentRunner,
    holdout: Holdout,
    write_script: Callable[..., Path],
    predictions: str | None,
    why: str,
) -> None:
    """No, too few, NaN or oversized predictions are a failed result saying what was wrong
    with the predictions, never an exception."""
    if predictions is None:
        code = "print('no predictions')\n"
    elif predictions == "oversized":  # 68 MiB, over the 64 MiB a predictions file may have
        code = (
            "import os\nwith open(os.environ['PREDICTIONS_PATH'], 'w') as f:\n"
            "    f.write('prediction\\n')\n"
            "    for _ in range(17):\n        f.write('cat\\n' * (1024 ** 2))\n"
        )
    else:
        code = f"import os\nopen(os.environ['PREDICTIONS_PATH'], 'w').write({predictions!r})\n"
    result = runner.run(write_script(code), SPEC, 0, holdout=holdout)
    assert not result.success
    assert result.metrics == {}
    assert result.error_message is not None
    assert "predictions" in result.error_message and "$PREDICTIONS_PATH" in result.error_message
    assert why in result.error_message


def test_runner_run_prints_the_verified_metrics(
    engine: DockerEngine, data: Path, write_script: Callable[..., Path]
) -> None:
    """`runner run exp.py --holdout DATA --target COL --task classification` prints the
    runner's scores, says they are verified, and shows the script's claim apart."""
    from tests.integration.test_cli import runner_cli

    script = write_script(LIAR)
    out = runner_cli(
        "run", str(script), "--holdout", str(data), "--target", "label",
        "--task", "classification", "--seed", "3", "--no-record",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "accuracy=0.5000" in out.stdout
    assert "verified: the runner's scores on 20 held-out rows" in out.stdout
    assert "the script reported: accuracy=1.0000" in out.stdout
