"""Run machine-generated scikit-learn experiments in hardened, single-use containers."""

from runner.cleanup import cleanup
from runner.codegen import CodeGenerator
from runner.exceptions import ExperimentExecutionError
from runner.experiment_runner import ExperimentRunner
from runner.history import ResultsHistory
from runner.models import ExperimentResult, ExperimentSpec, PreprocessingConfig
from runner.settings import ExperimentDefaults

__all__ = [
    "CodeGenerator",
    "ExperimentDefaults",
    "ExperimentExecutionError",
    "ExperimentResult",
    "ExperimentRunner",
    "ExperimentSpec",
    "PreprocessingConfig",
    "ResultsHistory",
    "cleanup",
]
