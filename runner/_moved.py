"""Module paths from before the package had layers, kept working.

``from runner.engine import DockerEngine``, ``runner.mcp_server.build_server``,
``python -m runner.lock`` and the like were documented; each old name is now an
alias of its module's new home: the same module object (not a copy), so
whatever is done through the old name is done to the module itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType

#: Old module name -> the module it is now.
MOVED = {
    "runner.engine": "runner.sandbox.engine",
    "runner.mcp_server": "runner.mcp",
    "runner.codegen": "runner.experiment.codegen",
    "runner.demo": "runner.cli.demo",
    "runner.lock": "runner.image.python_lock",
    "runner.experiment_runner": "runner.experiment.runner",
    "runner.models": "runner.core.models",
    "runner.settings": "runner.core.settings",
    "runner.exceptions": "runner.core.exceptions",
    "runner.history": "runner.results.history",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module it moved to."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._own_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Loading under the old name gave the module the alias's spec: it keeps its own.
        module.__spec__ = self._own_spec

    def get_code(self, fullname: str) -> CodeType | None:
        """The new module's code, for ``python -m OLD_NAME``."""
        spec = importlib.util.find_spec(self.target)
        loader = spec.loader if spec is not None else None
        get_code = getattr(loader, "get_code", None)
        return get_code(self.target) if get_code is not None else None


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        moved = MOVED.get(fullname)
        if moved is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(moved))


def install() -> None:
    """Make the old names importable (once per interpreter)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
