"""Configuration: one typed object, fed from ``RUNNER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The tag ``runner image build`` gives the pinned scikit-learn image. It names what
#: the image holds, so an image with other contents never takes an older tag.
DEFAULT_IMAGE = "experiment-runner/sklearn:1.9.1-mpl3.11.2-py3.11"
#: The tag of the Python base the pinned image is built on.
DEFAULT_BASE_IMAGE = "experiment-runner/base:bookworm"
#: How a run's files reach the sandbox: "bind" (mounted in place: a local engine),
#: "copy" (through the engine's API into a volume), or "auto" (bind where the engine
#: sees this machine's files and the sandbox user may read them, else copy).
Transfer = Literal["auto", "bind", "copy"]
TRANSFERS: tuple[Transfer, ...] = ("auto", "bind", "copy")
#: What a group's name may be (it goes into labels and a volume's name).
GROUP_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
#: The package index an image build takes wheels from unless ``RUNNER_INDEX_URL`` says another.
DEFAULT_INDEX_URL = "https://pypi.org/simple"


class ExperimentDefaults(BaseSettings):
    """Defaults for every run; each can be overridden per runner.

    Read from the environment with the prefix ``RUNNER_``, for example
    ``RUNNER_EXPERIMENT_TIMEOUT=60`` or ``RUNNER_MEMORY_LIMIT=4g``.
    """

    model_config = SettingsConfigDict(env_prefix="RUNNER_", extra="ignore")

    experiment_timeout: int = Field(default=300, gt=0)
    image: str = DEFAULT_IMAGE
    memory_limit: str = "2g"
    cpu_limit: float = Field(default=1.0, gt=0)
    pids_limit: int = Field(default=256, gt=0)
    runtime: str | None = None
    #: How a run's files reach the sandbox (``Transfer``).
    transfer: Transfer = "auto"
    #: Bytes of stdout and of stderr kept per run (the tail is kept).
    output_limit: int = Field(default=1024 * 1024, gt=0)
    #: Size of the writable, non-executable ``/tmp`` inside the sandbox.
    tmpfs_size: str = "256m"
    #: Where files the script writes to its working directory (or $OUTPUT_DIR) are
    #: copied back after each run; unset: outputs are off (the working directory is
    #: the read-only script directory).
    outputs_dir: Path | None = None
    #: Limits of one run's outputs: bytes in all (also the size of the writable
    #: working directory), files, and bytes of one file.
    outputs_max_bytes: str = "512m"
    outputs_max_files: int = Field(default=1000, gt=0)
    outputs_max_file_size: str = "256m"
    #: An MLflow tracking URI each result is logged to (unset: no tracking).
    tracking_uri: str | None = None
    #: A Ray cluster to run on instead of this machine's engine: its address
    #: (``HOST:PORT``) or ``auto`` (``RAY_ADDRESS``, else the cluster started here).
    cluster: str | None = None
    #: Where ``CodeGenerator`` puts one directory per generated experiment.
    experiments_dir: Path = Path("experiments")
    #: The JSON Lines results history the CLI appends to.
    results_file: Path = Path("results.jsonl")
    #: Downloaded wheels and the debootstrap work area.
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "experiment-runner")
    #: A base image pinned by digest (``name@sha256:...``) to pull instead of
    #: building one with debootstrap; only where a registry is reachable.
    base_image_digest: str | None = None
    #: A name for this process's runs (``RUNNER_GROUP``): each container and volume they
    #: make carries it, and ``runner cleanup`` (with ``--all`` too) then touches that
    #: group's alone. For test suites and CI jobs that share an engine with other users.
    group: str | None = Field(default=None, pattern=GROUP_PATTERN)
    #: The Debian mirror debootstrap builds the base from.
    debian_mirror: str = "http://deb.debian.org/debian"
    #: The one package index (PEP 503 simple API) an image build locks and downloads
    #: from. uv and pip are given it on their command line and read no index from
    #: their own configuration, the environment or a requirements file.
    index_url: str = DEFAULT_INDEX_URL

    @field_validator("index_url")
    @classmethod
    def _index_is_a_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http", "file") or not (parts.netloc or parts.path):
            raise ValueError(f"an index is an https://, http:// or file:// URL, not {value!r}")
        if any(c.isspace() for c in value):
            raise ValueError("an index URL holds no whitespace")
        return value
