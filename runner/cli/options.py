"""The command line's options, each declared once, and the ``RunnerOptions`` they make.

Every option that tells a runner something is named after its field of
``RunnerOptions`` (``dest``), and ``runner_options`` reads them back by those
names: a command that takes an option cannot forget to pass it on (``runner
batch --mlflow`` once dropped its URI that way). Commands take the groups they
need as argparse parents.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError
from runner.core.options import RunnerOptions
from runner.core.settings import TRANSFERS, ExperimentDefaults
from runner.experiment.holdout import Holdout
from runner.results.history import ResultsHistory


def _group(build: list[tuple[tuple[str, ...], dict[str, object]]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    for flags, spec in build:
        parser.add_argument(*flags, **spec)  # type: ignore[arg-type]
    return parser


#: The sandbox's limits and isolation (run, batch, demo, mcp: for mcp, the most a client gets).
POLICY = _group([
    (("--timeout",), {"dest": "timeout", "type": float,
                      "help": "seconds before a run's container is killed"}),
    (("--memory",), {"dest": "memory_limit", "metavar": "SIZE",
                     "help": "memory cap of each run, e.g. 512m or 2g (no swap)"}),
    (("--cpus",), {"dest": "cpu_limit", "type": float, "help": "CPU cap of each run, e.g. 1.0"}),
    (("--runtime",), {"help": "OCI runtime registered with the engine: runc or runsc"}),
    (("--image",), {"help": "the image to run in (default: RUNNER_IMAGE, else the pinned image)"}),
    (("--transfer",), {"choices": TRANSFERS,
                       "help": "how the scripts' files reach the sandbox: bind-mounted in place, "
                       "copied through the engine's API, or auto (bind where the engine sees "
                       "them; default)"}),
])  # fmt: skip

#: What the scripts see besides their own directory, and what comes back (run, batch).
FILES = _group([
    (("--input",), {"dest": "inputs", "action": "append", "type": Path, "metavar": "PATH",
                    "help": "a file or directory every script sees read-only at its own "
                    "path (repeatable)"}),
    (("--outputs",), {"dest": "outputs_dir", "type": Path, "metavar": "DIR",
                      "help": "make the working directory writable and copy what a script "
                      "writes there (or to $OUTPUT_DIR) back into DIR (a batch: DIR/NNNN-NAME)"}),
])  # fmt: skip

#: Where the sandboxes run, and whether some are started ahead (run, batch, demo).
WHERE = _group([
    (("--warm",), {"dest": "warm_pool", "type": int, "default": 0, "metavar": "N",
                   "help": "keep N single-use containers started ahead, libraries preloaded "
                   "(with --ray: N on each node)"}),
    (("--ray",), {"dest": "cluster", "metavar": "ADDRESS",
                  "help": "run on a Ray cluster: its address (HOST:PORT) or auto (default: "
                  "RUNNER_CLUSTER, else this machine's engine)"}),
    (("--build-missing",), {"action": "store_true",
                            "help": "with --ray: a node whose engine lacks the runner's own "
                            "image builds it first"}),
])  # fmt: skip

#: Where results are recorded (run, batch, demo, mcp).
RESULTS = _group([
    (("--results",), {"type": Path, "metavar": "FILE",
                      "help": "append results to this JSON Lines file (default: "
                      "RUNNER_RESULTS_FILE, else results.jsonl)"}),
    (("--no-record",), {"action": "store_true", "help": "do not record the results"}),
    (("--mlflow",), {"dest": "tracking_uri", "metavar": "URI",
                     "help": "also log each result as an MLflow run (default: "
                     "RUNNER_TRACKING_URI)"}),
])  # fmt: skip


#: Held-out scoring of each run (run, batch): the runner splits the data and scores.
HOLDOUT = _group([
    (("--holdout",), {"type": Path, "metavar": "DATA",
                      "help": "score each script on rows of this CSV file it never sees the "
                      "labels of: it reads $TRAIN_PATH and $TEST_PATH and writes "
                      "$PREDICTIONS_PATH (needs --target and --task)"}),
    (("--target",), {"metavar": "COLUMN", "help": "with --holdout: the column to predict"}),
    (("--task",), {"choices": ("classification", "regression"),
                   "help": "with --holdout: the kind of task (what the runner scores)"}),
    (("--test-size",), {"type": float, "default": 0.25, "metavar": "F",
                        "help": "with --holdout: the share of rows held out (default 0.25)"}),
    (("--seed",), {"type": int, "default": 0,
                   "help": "with --holdout: the split's seed (default 0)"}),
    (("--test-data",), {"type": Path, "metavar": "FILE",
                        "help": "with --holdout: score on this file's rows instead of a split"}),
])  # fmt: skip


def holdout_for(args: argparse.Namespace) -> Holdout | None:
    """The held-out split the command line asks for (None: the script's own metrics);
    ``ExperimentExecutionError`` for a half-given one."""
    if args.holdout is None:
        if args.target or args.task or args.test_data:
            raise ExperimentExecutionError(
                "--target, --task and --test-data go with --holdout.",
                hint="add --holdout DATA, e.g. --holdout data.csv --target label "
                "--task classification.",
            )
        return None
    if not args.target or not args.task:
        raise ExperimentExecutionError(
            "--holdout needs --target and --task.",
            hint="e.g. --holdout data.csv --target label --task classification.",
        )
    try:
        return Holdout(
            args.holdout, args.target, args.task, args.test_size, args.seed, args.test_data
        )
    except ValueError as e:
        raise ExperimentExecutionError(str(e), hint="see `runner run --help`.") from e


def runner_options(args: argparse.Namespace) -> RunnerOptions:
    """The ``RunnerOptions`` the parsed command line gives: every option by its field's name."""
    given = {name: getattr(args, name, None) for name in RunnerOptions.model_fields}
    if given["inputs"] is not None:
        given["inputs"] = tuple(given["inputs"])
    return RunnerOptions().merged(**given)


def history_for(args: argparse.Namespace, settings: ExperimentDefaults) -> ResultsHistory | None:
    """The results history the command records to (None: ``--no-record``)."""
    if args.no_record:
        return None
    return ResultsHistory(args.results or settings.results_file)
