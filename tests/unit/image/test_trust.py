"""What a user image build trusts: requirements files and locks are hostile input.

The cases that would run a package's code on this machine use a tiny project
whose build backend (and setup.py) writes a marker file; the cases that would
choose a server name a listener on 127.0.0.1. uv and pip still run when a test
lets them (``tools``), but only against loopback, so no test sends a packet off
this machine, even against a runner that let the file through.
"""

import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from runner import ExperimentDefaults, ExperimentExecutionError
from runner.image.build import build_user_image, download_wheels
from runner.image.definition import image_dir
from runner.image.python_lock import check_lock, compile_lock, read_lock, read_requirements

SHA = "0" * 64
DEFAULT_LOCK = image_dir() / "requirements.lock"

BACKEND = """\
import pathlib

pathlib.Path({marker!r}).write_text("the package's code ran on the host")


def get_requires_for_build_wheel(config_settings=None):
    return []


get_requires_for_build_editable = get_requires_for_build_sdist = get_requires_for_build_wheel


def prepare_metadata_for_build_wheel(directory, config_settings=None):
    info = pathlib.Path(directory) / "evil-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\\nName: evil\\nVersion: 1.0\\n")
    return info.name


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel
"""


def hostile_project(root: Path) -> tuple[Path, Path]:
    """A project named evil whose backend and setup.py write ``root/MARKER``; and the marker."""
    marker = root / "MARKER"
    project = root / "evil-1.0"
    project.mkdir()
    # An in-tree backend with no build requirements: a build needs no index at all.
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    (project / "backend.py").write_text(BACKEND.format(marker=str(marker)))
    (project / "setup.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('setup.py ran')\n"
    )
    return project, marker


def hostile_sdist(root: Path) -> tuple[Path, str, Path]:
    """``evil-1.0.tar.gz`` of that project in a find-links directory; its sha256; the marker."""
    project, marker = hostile_project(root)
    links = root / "links"
    links.mkdir()
    sdist = links / "evil-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        archive.add(project, arcname=project.name)
    return links, sha256(sdist.read_bytes()).hexdigest(), marker


def default_pins() -> str:
    """The default lock's entries: a user lock must keep them, so a hostile one carries them."""
    return DEFAULT_LOCK.read_text()


class Listener:
    """An HTTP server on 127.0.0.1 that answers 404 to everything and notes each request."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.settimeout(0.1)
        self.requests: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}/simple"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                try:
                    first = connection.recv(65536).split(b"\r\n", 1)[0]
                    self.requests.append(first.decode(errors="replace") or "(no request)")
                    connection.sendall(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                except OSError:
                    self.requests.append("(connection)")

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.socket.close()


@pytest.fixture
def hostile() -> Iterator[Listener]:
    """A server a hostile file names; it must never be contacted."""
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture
def index() -> Iterator[Listener]:
    """The index the runner is configured with."""
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[list[str]]]:
    """Every command started through subprocess.run; it still runs, confined to loopback.

    Were a hostile file let through, uv and pip would run and show it (a marker,
    a connection), but their default index is a loopback server that knows no
    package and they read no configuration, so nothing leaves this machine.
    """
    real = subprocess.run
    started: list[list[str]] = []
    nowhere = Listener()
    url = nowhere.url

    def run(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        started.append([str(part) for part in cmd])
        given = kwargs.get("env") or os.environ
        env = {k: v for k, v in given.items() if not k.startswith(("PIP_", "UV_"))}
        env.update(
            PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=url, PIP_RETRIES="0",
            PIP_DEFAULT_TIMEOUT="5", PIP_CACHE_DIR=str(tmp_path / "pip-cache"),
            UV_NO_CONFIG="1", UV_DEFAULT_INDEX=url, UV_HTTP_TIMEOUT="5",
            UV_PYTHON_DOWNLOADS="never", UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        )  # fmt: skip
        kwargs["env"] = env
        kwargs.setdefault("timeout", 120)
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    yield started
    nowhere.close()


def quiet(message: str) -> None:
    """A log that says nothing."""


def refusal(call: Any, *args: Any, **kwargs: Any) -> ExperimentExecutionError | None:
    """The error ``call`` raised, if any: the tests look at the host before the message."""
    try:
        call(*args, **kwargs)
    except ExperimentExecutionError as e:
        return e
    return None


def assert_refused(
    error: ExperimentExecutionError | None, path: Path, number: int, line: str
) -> None:
    """The error names the file, the line number and the line as written."""
    assert error is not None, f"{path} was accepted"
    assert f"{path} line {number} is refused" in str(error), str(error)
    assert line.strip() in str(error), str(error)


# 1. A requirements file runs package code on the host.


def test_an_editable_requirement_never_runs_on_the_host(
    tmp_path: Path, tools: list[list[str]]
) -> None:
    """`-e DIR` is refused before uv starts: the project's backend never runs here."""
    project, marker = hostile_project(tmp_path)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"-e {project}\n")
    error = refusal(compile_lock, [requirements], tmp_path / "out.lock", log=quiet)
    assert not marker.exists(), marker.read_text()
    assert tools == []
    assert_refused(error, requirements, 1, f"-e {project}")


def test_a_source_build_asked_for_by_the_file_never_runs_on_the_host(
    tmp_path: Path, tools: list[list[str]]
) -> None:
    """The file's --no-binary NAME with --find-links DIR is refused: uv never builds the sdist."""
    links, _, marker = hostile_sdist(tmp_path)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"--no-binary evil\n--find-links {links}\nevil\n")
    error = refusal(compile_lock, [requirements], tmp_path / "out.lock", log=quiet)
    assert not marker.exists(), marker.read_text()
    assert tools == []
    assert_refused(error, requirements, 1, "--no-binary evil")


@pytest.mark.parametrize(
    "line",
    [
        "-e ./evil",
        "--editable=./evil",
        "-r other.txt",
        "--requirement other.txt",
        "-c constraints.txt",
        "--no-binary :all:",
        "--only-binary :none:",
        "--find-links ./wheels",
        "--hash=sha256:" + SHA,
        "--pre",
        "git+https://github.com/example/evil",
        "https://example.com/evil-1.0.tar.gz",
        "file:///tmp/evil-1.0.tar.gz",
        "./evil",
        "/abs/evil",
        "evil @ https://example.com/evil-1.0.tar.gz",
        "evil @ file:///tmp/evil",
        "evil.tar.gz",
        "evil.whl",
        "evil==1.0+x.tar.gz",
        "evil==1.0 --hash=sha256:" + SHA,
        "evil --config-settings=x=y",
        "evil===1.0",
        "evil==${VERSION}",
        "evil \\",
        "evil\x0c-e ./evil",
    ],
)
def test_a_requirements_file_holds_plain_requirements_only(
    line: str, tmp_path: Path, tools: list[list[str]]
) -> None:
    """Options, includes, URLs, paths, archive names, === and ${VAR} are refused before uv."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"tabulate==0.9.0  # fine\n{line}\n")
    error = refusal(build_user_image, None, "mine:1", requirements=requirements, log=quiet)
    assert tools == []
    assert error is not None and f"{requirements} line 2 is refused" in str(error), error
    assert line.split("\x0c")[0].strip() in str(error)


def test_a_lock_made_from_an_editable_is_refused(tmp_path: Path) -> None:
    """An `-e` line among hashed pins is refused (the old check skipped every `-` line)."""
    lock = tmp_path / "user.lock"
    lock.write_text(f"-e file://{tmp_path}/evil-1.0\n" + default_pins())
    assert_refused(refusal(check_lock, lock), lock, 1, f"-e file://{tmp_path}/evil-1.0")


def test_markers_and_comments_stay_in_requirements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A harmless marker reaches uv as written; comments and blank lines are dropped."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# my packages\n\nxgboost>=2 ; python_version >= '3.10'  # boosting\ntabulate[widechars]\n"
    )
    seen: list[str] = []

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(Path(cmd[-1]).read_text())
        return subprocess.CompletedProcess(cmd, 1, "", "stop here")

    monkeypatch.setattr(subprocess, "run", run)
    assert refusal(compile_lock, [requirements], tmp_path / "out.lock", log=quiet) is not None
    assert seen == ['xgboost>=2; python_version >= "3.10"\ntabulate[widechars]\n']


def test_the_shipped_definition_passes_the_check() -> None:
    """The default image's requirements.in and lock are what the check accepts."""
    names = [r.name for r in read_requirements(image_dir() / "requirements.in")]
    assert names == ["scikit-learn", "numpy", "scipy", "pandas", "joblib", "matplotlib"]
    assert {entry.name for entry in read_lock(DEFAULT_LOCK)} >= set(names)


# 2. A hand-written lock runs sdist code on the host.


def test_a_lock_asking_for_a_source_build_never_runs_on_the_host(
    tmp_path: Path, tools: list[list[str]]
) -> None:
    """--no-binary NAME, --find-links DIR and a hashed NAME==V: refused before pip downloads."""
    links, digest, marker = hostile_sdist(tmp_path)
    lock = tmp_path / "user.lock"
    lock.write_text(f"--no-binary evil\n--find-links {links}\nevil==1.0 --hash=sha256:{digest}\n")
    error = refusal(download_wheels, lock, tmp_path / "wheels", log=quiet)
    assert not marker.exists(), marker.read_text()
    assert tools == []
    assert_refused(error, lock, 1, "--no-binary evil")


def test_a_pin_that_reads_as_a_file_name_never_runs_on_the_host(
    tmp_path: Path, tools: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evil==1.0+x.tar.gz` is a valid pin and a file name pip would build, even wheels-only."""
    links, digest, marker = hostile_sdist(tmp_path)
    (links / "evil-1.0.tar.gz").rename(links / "evil==1.0+x.tar.gz")
    monkeypatch.chdir(links)
    lock = tmp_path / "user.lock"
    lock.write_text(f"evil==1.0+x.tar.gz --hash=sha256:{digest}\n")
    error = refusal(download_wheels, lock, tmp_path / "wheels", log=quiet)
    assert not marker.exists(), marker.read_text()
    assert tools == []
    assert_refused(error, lock, 1, "evil==1.0+x.tar.gz")


@pytest.mark.parametrize(
    "line",
    [
        "--no-binary evil",
        "--find-links /tmp/wheels",
        "-e ./evil",
        "-r other.lock",
        "-c constraints.txt",
        "--index-url http://127.0.0.1:9/simple",
        "--hash=sha256:" + SHA,
        "evil @ https://example.com/evil-1.0.tar.gz --hash=sha256:" + SHA,
        "./evil-1.0.tar.gz --hash=sha256:" + SHA,
        "git+https://github.com/example/evil --hash=sha256:" + SHA,
        "evil==1.0; python_version >= '3' --hash=sha256:" + SHA,
        "evil==1.0 --hash=sha256:" + SHA + " --config-settings=x=y",
        "evil==1.0 --hash=md5:" + "0" * 32,
        "evil==1.0 --hash=sha256:" + SHA + " # a comment pip would end the entry at",
        "# -*- coding: utf-7 -*-",
    ],
)
def test_a_lock_holds_hashed_pins_only(line: str, tmp_path: Path, tools: list[list[str]]) -> None:
    """Any other line of a user lock is refused, named, before pip is started."""
    lock = tmp_path / "user.lock"
    lock.write_text(f"{line}\n" + default_pins())
    settings = ExperimentDefaults(cache_dir=tmp_path / "cache")
    error = refusal(
        build_user_image, None, "mine:1", lock=lock, settings=settings, force=True, log=quiet
    )
    assert tools == []
    assert_refused(error, lock, 1, line)


def test_a_second_entry_for_a_package_is_refused(tmp_path: Path) -> None:
    """Two pins of one package (in any spelling) are refused at the second."""
    lock = tmp_path / "user.lock"
    lock.write_text(f"six==1.17.0 --hash=sha256:{SHA}\nSix==1.16.0 --hash=sha256:{SHA}\n")
    assert_refused(refusal(check_lock, lock), lock, 2, "Six==1.16.0")


def test_an_entry_is_named_by_the_line_that_breaks_it(tmp_path: Path) -> None:
    """A continuation that is not a hash is refused at its own line."""
    lock = tmp_path / "user.lock"
    lock.write_text(f"evil==1.0 \\\n    --hash=sha256:{SHA} \\\n    --global-option=--evil\n")
    assert_refused(refusal(check_lock, lock), lock, 3, "--global-option=--evil")


def test_a_loose_pin_is_named_with_its_line(tmp_path: Path) -> None:
    """A pin without a hash or an exact version is refused with its line number."""
    lock = tmp_path / "user.lock"
    lock.write_text(f"# a lock\nsix==1.17.0 --hash=sha256:{SHA}\nevil>=1 --hash=sha256:{SHA}\n")
    error = refusal(check_lock, lock)
    assert error is not None
    assert f"{lock} is not a hash lock: evil>=1 lack an exact version or a hash (line 3)" in str(
        error
    )


# 3. Index options choose which servers the host contacts.

INDEX_OPTIONS = [
    "--extra-index-url {url}",
    "--extra-index-url={url}",
    "--index-url {url}",
    "-i {url}",
    "--find-links {url}/evil/",
    "-f {url}/evil/",
]


@pytest.mark.parametrize("option", INDEX_OPTIONS)
def test_an_index_in_requirements_is_never_contacted(
    option: str, tmp_path: Path, hostile: Listener, tools: list[list[str]]
) -> None:
    """An index or find-links URL in a requirements file is refused: uv never queries it."""
    line = option.format(url=hostile.url)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"six\n{line}\n")
    error = refusal(compile_lock, [requirements], tmp_path / "out.lock", log=quiet)
    assert hostile.requests == []
    assert tools == []
    assert_refused(error, requirements, 2, line)


@pytest.mark.parametrize("option", INDEX_OPTIONS)
def test_an_index_in_a_lock_is_never_contacted(
    option: str, tmp_path: Path, hostile: Listener, tools: list[list[str]]
) -> None:
    """An index or find-links URL in a lock is refused: pip never queries it."""
    line = option.format(url=hostile.url)
    lock = tmp_path / "user.lock"
    lock.write_text(f"{line}\nsix==1.17.0 --hash=sha256:{SHA}\n")
    error = refusal(download_wheels, lock, tmp_path / "wheels", log=quiet)
    assert hostile.requests == []
    assert tools == []
    assert_refused(error, lock, 1, line)


def test_an_existing_lock_is_read_before_it_guides_uv(
    tmp_path: Path, hostile: Listener, tools: list[list[str]]
) -> None:
    """The lock uv would take its preferred versions from is a hostile file too."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    out = tmp_path / "requirements.lock"
    out.write_text(f"--extra-index-url {hostile.url}\nsix==1.17.0 --hash=sha256:{SHA}\n")
    error = refusal(compile_lock, [requirements], out, log=quiet)
    assert hostile.requests == []
    assert tools == []
    assert_refused(error, out, 1, f"--extra-index-url {hostile.url}")


def hostile_configuration(root: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """uv's and pip's own settings, everywhere they look, all naming ``url``."""
    here = root / "here"
    here.mkdir()
    (here / "uv.toml").write_text(f'index-url = "{url}"\nfind-links = ["{url}/six/"]\n')
    (here / "pyproject.toml").write_text(f'[tool.uv]\nextra-index-url = ["{url}"]\n')
    (here / "pip.conf").write_text(f"[global]\nindex-url = {url}\nfind-links = {url}/six/\n")
    for tool, name in (("uv", "uv.toml"), ("pip", "pip.conf")):
        (root / "config" / tool).mkdir(parents=True)
        (root / "config" / tool / name).write_bytes((here / name).read_bytes())
    monkeypatch.chdir(here)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(root / "config"))
    for name in ("UV_DEFAULT_INDEX", "UV_INDEX", "UV_EXTRA_INDEX_URL", "PIP_INDEX_URL",
                 "PIP_EXTRA_INDEX_URL"):  # fmt: skip
        monkeypatch.setenv(name, url)
    monkeypatch.setenv("UV_FIND_LINKS", f"{url}/six/")
    monkeypatch.setenv("PIP_FIND_LINKS", f"{url}/six/")
    monkeypatch.setenv("UV_CONFIG_FILE", str(here / "uv.toml"))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(here / "pip.conf"))
    # Kept: where downloads are cached (here, nowhere shared).
    monkeypatch.setenv("UV_CACHE_DIR", str(root / "uv-cache"))
    monkeypatch.setenv("PIP_CACHE_DIR", str(root / "pip-cache"))


def test_uv_asks_the_configured_index_alone(
    tmp_path: Path, index: Listener, hostile: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real uv, with uv.toml, pyproject.toml, user config and UV_* all naming another server."""
    hostile_configuration(tmp_path, hostile.url, monkeypatch)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    error = refusal(
        compile_lock, [requirements], tmp_path / "out.lock", index_url=index.url, log=quiet
    )
    assert hostile.requests == []
    assert any("/simple/six/" in request for request in index.requests), index.requests
    assert error is not None and "No lock" in str(error)


def test_pip_asks_the_configured_index_alone(
    tmp_path: Path, index: Listener, hostile: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real pip, with PIP_CONFIG_FILE, user pip.conf and PIP_* all naming another server."""
    hostile_configuration(tmp_path, hostile.url, monkeypatch)
    lock = tmp_path / "user.lock"
    lock.write_text(f"six==1.17.0 --hash=sha256:{SHA}\n")
    error = refusal(download_wheels, lock, tmp_path / "wheels", index_url=index.url, log=quiet)
    assert hostile.requests == []
    assert any("/simple/six/" in request for request in index.requests), index.requests
    assert error is not None and "Downloading the locked wheels failed" in str(error)


def test_a_user_build_passes_runner_index_url_to_uv_and_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RUNNER_INDEX_URL reaches both command lines; uv and pip start in an empty directory."""
    monkeypatch.setenv("RUNNER_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_FIND_LINKS", "/somewhere")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tabulate==0.9.0\n")
    calls: list[tuple[list[str], dict[str, str], list[Path]]] = []

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append((cmd, kwargs["env"], sorted(Path(kwargs["cwd"]).iterdir())))
        if "compile" in cmd:
            out = Path(cmd[cmd.index("--output-file") + 1])
            out.write_text(default_pins() + f"tabulate==0.9.0 --hash=sha256:{SHA}\n")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 1, "", "no network in a unit test")

    monkeypatch.setattr(subprocess, "run", run)
    error = refusal(
        build_user_image, None, "mine:1", requirements=requirements, force=True, log=quiet
    )
    assert error is not None and "Downloading the locked wheels failed" in str(error)
    (uv, uv_env, uv_cwd), (pip, pip_env, pip_cwd) = calls
    assert uv[uv.index("--default-index") + 1] == "https://mirror.example/simple"
    assert "--no-config" in uv
    assert uv[uv.index("--python") + 1] == sys.executable
    assert pip[pip.index("--index-url") + 1] == "https://mirror.example/simple"
    assert "--only-binary=:all:" in pip
    for env in (uv_env, pip_env):
        assert env["PIP_CONFIG_FILE"] == os.devnull
        assert "PIP_FIND_LINKS" not in env
    assert uv_cwd == pip_cwd == []


def test_the_index_setting_is_a_url() -> None:
    """RUNNER_INDEX_URL must be an https, http or file URL."""
    with pytest.raises(ValidationError, match="an index is an"):
        ExperimentDefaults(index_url="pypi.org/simple")
