"""Settings in version control: ``[tool.experiment-runner]`` in ``pyproject.toml``, or
a ``runner.toml``.

The nearest such file, looking from the working directory upward, sets any
setting the environment can (``ExperimentDefaults``); a ``RUNNER_*`` variable
wins over it, a command-line option or an argument over both. Keys are the
settings' names (``memory_limit``, or ``memory-limit``), and ``timeout`` is
``experiment_timeout``. An unknown key or a bad value is an error that names
the file and the key: a policy that does not say what it seems to is never
half-applied.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_settings import TomlConfigSettingsSource

from runner.core.exceptions import ExperimentExecutionError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

#: The table of ``pyproject.toml`` that holds the runner's settings.
PYPROJECT_TABLE = ("tool", "experiment-runner")
#: A file of its own, whose top level is that table.
RUNNER_TOML = "runner.toml"
#: Key names the file accepts besides the settings' own names.
ALIASES = {"timeout": "experiment_timeout"}
FILE_HINT = (
    "keys are the settings' names (RUNNER_* lower-cased, without the prefix; `timeout` "
    "for experiment_timeout): see docs/configuration.md."
)


@dataclass(frozen=True)
class PolicyFile:
    """The file the settings come from, and the table in it."""

    path: Path
    table: tuple[str, ...]

    def describe(self) -> str:
        """Where, in words: ``pyproject.toml [tool.experiment-runner]`` or ``runner.toml``."""
        return f"{self.path} [{'.'.join(self.table)}]" if self.table else str(self.path)


def find_policy_file(start: Path | None = None) -> PolicyFile | None:
    """The nearest ``runner.toml``, or ``pyproject.toml`` with the runner's table, from
    ``start`` (default: the working directory) upward; ``runner.toml`` first in one
    directory. A ``pyproject.toml`` without the table is passed by."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        own = directory / RUNNER_TOML
        if own.is_file():
            return PolicyFile(own, ())
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and _has_table(pyproject):
            return PolicyFile(pyproject, PYPROJECT_TABLE)
    return None


def _has_table(pyproject: Path) -> bool:
    data = _read(pyproject)
    tool = data.get("tool")
    return isinstance(tool, dict) and PYPROJECT_TABLE[1] in tool


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ExperimentExecutionError(
            f"Cannot read the runner's settings from {path}: {e}", hint=FILE_HINT
        ) from e


def _alone(settings_cls: type[BaseSettings]) -> type[BaseSettings]:
    """``settings_cls`` reading its arguments only: the file's values checked by every
    validator of the settings, with no variable or file mixed in."""

    def arguments_only(
        cls: type[BaseSettings], /, settings_cls: type[BaseSettings], init_settings: Any, **_: Any
    ) -> tuple[Any, ...]:
        return (init_settings,)

    namespace = {"settings_customise_sources": classmethod(arguments_only)}
    return type(f"{settings_cls.__name__}FromFile", (settings_cls,), namespace)


class PolicyFileSource(TomlConfigSettingsSource):
    """pydantic-settings' TOML source for the nearest policy file, its keys checked."""

    def __init__(self, settings_cls: type[BaseSettings], found: PolicyFile | None) -> None:
        self.found = found
        if found is not None:
            _read(found.path)  # a TOML error names the file, not a parser's internals
        super().__init__(
            settings_cls,
            toml_file=found.path if found is not None else None,
            toml_table_header=found.table if found is not None else (),
        )

    def __call__(self) -> dict[str, Any]:
        found = self.found
        if found is None:
            return {}
        return checked(self.settings_cls, found, self.toml_data)


def checked(
    settings_cls: type[BaseSettings], found: PolicyFile, table: dict[str, Any]
) -> dict[str, Any]:
    """The file's table as settings: keys named as fields, relative paths from the file's
    directory, every value validated; anything else raises, naming the file and the key."""
    where = found.describe()
    fields = settings_cls.model_fields
    values: dict[str, Any] = {}
    written: dict[str, str] = {}
    for key, value in table.items():
        name = ALIASES.get(key, key.replace("-", "_"))
        if name not in fields:
            raise ExperimentExecutionError(
                f"{where}: unknown key {key!r} (known: {', '.join(sorted([*fields, *ALIASES]))}).",
                hint=FILE_HINT,
            )
        if name in values:
            raise ExperimentExecutionError(
                f"{where}: {written[name]!r} and {key!r} both set {name}.", hint=FILE_HINT
            )
        if isinstance(value, str) and fields[name].annotation in (Path, Path | None):
            value = str(found.path.parent / value)  # relative to the file, as ruff's are
        values[name] = value
        written[name] = key
    try:
        _alone(settings_cls)(**values)
    except ValidationError as e:
        error = e.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "?"
        raise ExperimentExecutionError(
            f"{where}: bad value for {written.get(name, name)!r}: {error['msg']} "
            f"(given {values.get(name)!r}).",
            hint=FILE_HINT,
        ) from e
    return values
