"""Run machine-generated scikit-learn experiments in hardened, single-use containers."""

from runner import _moved
from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentResult, ExperimentSpec, PreprocessingConfig
from runner.core.settings import ExperimentDefaults
from runner.experiment.codegen import CodeGenerator
from runner.experiment.holdout import Holdout
from runner.experiment.jobs import BatchJob
from runner.experiment.runner import ExperimentRunner
from runner.results.history import ResultsHistory
from runner.sandbox.cleanup import cleanup

_moved.install()

__all__ = [
    "BatchJob",
    "CodeGenerator",
    "ExperimentDefaults",
    "ExperimentExecutionError",
    "ExperimentResult",
    "ExperimentRunner",
    "ExperimentSpec",
    "Holdout",
    "PreprocessingConfig",
    "ResultsHistory",
    "cleanup",
]
