"""The Docker seam: every docker-py call of the project passes through here.

Docker's exceptions are caught here and re-raised as ``ExperimentExecutionError``
with a hint, ``from`` the original. Unit tests replace this one object.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import docker
import requests
from docker.constants import DEFAULT_DOCKER_API_VERSION
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import _create_container_args
from docker.types.daemon import CancellableStream

from runner.core.exceptions import ExperimentExecutionError
from runner.sandbox.lifeline import address_of, lifeline, own_name, owned

ENGINE_HINT = (
    "start a Docker engine (as root on Debian or Ubuntu, `bash scripts/setup.sh` installs "
    "and starts one) or point DOCKER_HOST at a running one."
)
IMAGE_HINT = "build it with `runner image build`."
#: For an error the engine answered with: it runs, so starting one is no advice.
ANSWERED_HINT = (
    "the engine runs but refused the request; its log says why (an engine that "
    "`bash scripts/setup.sh` started logs to /var/log/dockerd.log)."
)
#: For an engine that stopped answering while a runner used it.
UNAVAILABLE_HINT = (
    "the engine went away or is restarting; a run waits for it to answer again, within its "
    "own timeout. If it does not come back: " + ENGINE_HINT
)
#: How a runtime's failure to set up or start a sandbox reads in the engine's answer.
RUNTIME_FAILURES = ("OCI runtime start failed", "OCI runtime create failed")

#: Which product answers the Docker API: Docker itself, or Podman's compatible service.
EngineKind = Literal["docker", "podman"]
PODMAN_PRODUCT = "Podman Engine"
#: A header only Podman's answers carry (its own API's version): its ping names it.
PODMAN_HEADER = "Libpod-Api-Version"
#: How often Podman's own wait endpoint checks the container (its compatible one spins).
PODMAN_WAIT_INTERVAL = "100ms"
#: Podman may answer 500 to removing a container that is just exiting; it works soon after.
REMOVE_ATTEMPTS = 4
REMOVE_RETRY_DELAY = 0.25


class EngineError(ExperimentExecutionError):
    """The engine answered a request with an error (it runs, but refused or failed)."""

    #: The error came after the run's script had started (the run did not see its end).
    after_start = False


class SandboxStartError(EngineError):
    """The runtime failed to start the sandbox; nothing of the script ran."""


class EngineUnavailable(ExperimentExecutionError):
    """The engine stopped answering: it went away, or restarts. What it ran may be gone.

    ``cut_off``: the run's script had started when the engine went (it did not end).
    """

    def __init__(self, message: str, *, hint: str | None = None, cut_off: bool = False) -> None:
        super().__init__(message, hint=hint or UNAVAILABLE_HINT)
        self.message = message
        self.cut_off = cut_off

    def while_running(self) -> EngineUnavailable:
        """The same outage, met after the run's script had started."""
        return EngineUnavailable(self.message, hint=self.hint, cut_off=True)


class SandboxRefused(EngineError):
    """The engine refused to create the sandbox (say, a bind source is missing);
    nothing of the script ran."""


class OutputStream(Protocol):
    """Frames of a container's output as ``(stdout, stderr)`` pairs, one side None."""

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes | None]]: ...

    def close(self) -> None: ...


class Engine(Protocol):
    """The typed interface of the Docker seam: ``DockerEngine`` and the tests' fake."""

    def info(self) -> dict[str, Any]: ...

    def image_id(self, ref: str) -> str: ...

    def create(self, image: str, command: list[str], **config: Any) -> str: ...

    def attach(self, container_id: str) -> OutputStream: ...

    def send_stdin(self, container_id: str, data: bytes) -> None: ...

    def open_stdin(self, container_id: str) -> StdinChannel | None: ...

    def start(self, container_id: str) -> None: ...

    def wait(self, container_id: str, timeout: float) -> int | None: ...

    def kill(self, container_id: str, signal: str = "SIGKILL") -> None: ...

    def state(self, container_id: str) -> ContainerState: ...

    def remove(self, container_id: str) -> None: ...

    def containers(self, label: str) -> list[ContainerInfo]: ...

    def inspect(self, container_id: str) -> dict[str, Any]: ...

    def describe(self) -> str: ...

    def kind(self) -> EngineKind: ...

    def create_volume(
        self,
        labels: Mapping[str, str],
        driver_opts: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> VolumeInfo: ...

    def remove_volume(self, name: str) -> None: ...

    def volumes(self, label: str) -> list[VolumeInfo]: ...

    def put_archive(self, container_id: str, path: str, data: bytes | BinaryIO) -> None: ...

    def get_archive(self, container_id: str, path: str) -> bytes: ...

    def answers(self) -> bool: ...

    def remove_leftovers(self) -> None: ...


class StdinChannel:
    """A container's stdin, attached ahead: written once, then closed. (The engine keeps
    such a connection open after the container has gone: it says nothing of liveness.)"""

    def __init__(self, raw: socket.socket, holder: object) -> None:
        self._raw = raw
        self._holder = holder  # docker-py's wrapper: closing it closes the connection

    def send(self, data: bytes) -> None:
        try:
            self._raw.sendall(data)
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._holder.close()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ContainerState:
    """How a container ended, as the engine saw it."""

    running: bool
    exit_code: int
    oom_killed: bool


@dataclass(frozen=True)
class ContainerInfo:
    """A container found by label."""

    id: str
    name: str
    status: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class VolumeInfo:
    """A named volume: its name, the engine's own path to its files, its labels."""

    name: str
    mountpoint: str
    labels: Mapping[str, str]


class DockerEngine:
    """A thin, typed wrapper around ``docker.DockerClient``."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        ping: Mapping[str, str] | None = None
        if client is None:
            client, ping = _client_from_env()
        self._client = client
        self._api = client.api
        self._description: str | None = None
        #: What could not be removed while the engine did not answer: removed once it does.
        self._leftovers: set[tuple[str, str]] = set()
        self._leftovers_lock = threading.Lock()
        self._version: dict[str, Any] | None = None
        #: How this process's lifeline reaches the engine (``runner.sandbox.lifeline``).
        self.address = address_of(self._api)
        #: The names containers were announced to the lifeline by, by ID.
        self._announced: dict[str, str] = {}
        self._info: dict[str, Any] | None = None
        self._kind: EngineKind | None = None if ping is None else _kind_from(ping)

    # engine ---------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The engine's ``docker info``, asked once: Podman's takes a fifth of a second or
        more (it asks its runtime and conmon their versions), and a runner asks it for its
        probe and again for each result's provenance."""
        if self._info is None:
            self._info = dict(self._call(self._client.info))
        return dict(self._info)

    def runtimes(self) -> set[str]:
        """Names of the OCI runtimes registered with the engine."""
        return set(self.info().get("Runtimes") or {})

    # images ---------------------------------------------------------------

    def image_id(self, ref: str) -> str:
        """The immutable ID of image ``ref``; raises when it is not there."""
        return str(self.image_inspect(ref)["Id"])

    def image_exists(self, ref: str) -> bool:
        try:
            self._api.inspect_image(ref)
        except ImageNotFound:
            return False
        except (DockerException, requests.exceptions.RequestException) as e:
            raise self._failed(e) from e
        return True

    def image_inspect(self, ref: str) -> dict[str, Any]:
        try:
            return dict(self._api.inspect_image(ref))
        except ImageNotFound as e:
            raise ExperimentExecutionError(f"Image {ref!r} not found.", hint=IMAGE_HINT) from e
        except (DockerException, requests.exceptions.RequestException) as e:
            raise self._failed(e) from e

    def load_image(self, archive: Path) -> None:
        """Load an image archive (``docker save`` format); the engine keeps its config as is."""
        with archive.open("rb") as file:
            self._call(self._api.load_image, file, quiet=True)

    def save_image(self, ref: str, dest: Path) -> None:
        """Write ``ref`` as an image archive (``docker save``) to ``dest``."""
        stream = self._call(self._api.get_image, ref, chunk_size=1 << 20)
        with dest.open("wb") as file:
            for chunk in stream:
                file.write(chunk)

    def tag_image(self, image_id: str, ref: str) -> None:
        repository, _, tag = ref.rpartition(":")
        if not repository or "/" in tag:
            repository, tag = ref, "latest"
        self._call(self._api.tag, image_id, repository, tag, force=True)

    def logs(self, container_id: str) -> str:
        """A (stopped) container's stdout and stderr, for a build step's error message."""
        data = self._call(self._api.logs, container_id, stdout=True, stderr=True)
        return bytes(data).decode("utf-8", "replace")

    def remove_image(self, ref: str) -> None:
        """Untag ``ref`` and remove its layers no other image uses; gone already is fine."""
        try:
            self._api.remove_image(ref)
        except ImageNotFound:
            return
        except (DockerException, requests.exceptions.RequestException) as e:
            raise self._failed(e) from e

    def prune_dangling(self, label: str) -> None:
        """Remove untagged images carrying ``label`` (old builds, build stages).

        A prune already running (another build's, 409) does the same: left to it.
        """
        try:
            self._client.images.prune(filters={"dangling": True, "label": label})
        except APIError as e:
            if e.status_code != 409:
                raise self._failed(e) from e
        except (DockerException, requests.exceptions.RequestException) as e:
            raise self._failed(e) from e

    # containers -------------------------------------------------------------

    def create(self, image: str, command: list[str], **config: Any) -> str:
        """Create (not start) a container and return its ID.

        One made for a caller (``runner.sandbox.lifeline.owned``) is named by the runner
        and announced to the caller's lifeline by that name before it exists, so that
        it goes even if the caller dies while the engine makes it.
        """
        announced = None
        if owned(config.get("labels")) and not config.get("name"):
            announced = own_name()
            config = {**config, "name": announced}
            lifeline().hold(self.address, "c", announced)
        # Announced still if this fails: the engine may have made it all the same (a
        # request that timed out); the lifeline's removal of a name never made is harmless.
        container_id = self._create(image, command, config)
        if announced is not None:
            with self._leftovers_lock:
                self._announced[container_id] = announced
        return container_id

    def _create(self, image: str, command: list[str], config: dict[str, Any]) -> str:
        try:
            # As ``containers.create`` does, without the inspect it adds to make a model:
            # only the ID is used (the check after create inspects once, in full).
            args = _create_container_args(
                {**config, "image": image, "command": command, "version": self._api._version}
            )
            created = self._api.create_container(**args)
        except ImageNotFound as e:
            raise ExperimentExecutionError(f"Image {image!r} not found.", hint=IMAGE_HINT) from e
        except APIError as e:
            explanation = str(e.explanation or e)
            if "bind source path does not exist" in explanation:
                hint = (
                    "the engine does not see this machine's files (a remote or "
                    "Docker-in-Docker engine): use transfer='auto' or 'copy' "
                    "(RUNNER_TRANSFER, runner run --transfer); or a volume the path "
                    "lies in was removed (`runner cleanup --all`): a cold run makes "
                    "the runner's own again."
                )
            else:
                hint = (
                    "check that the runtime and limits are supported by this engine "
                    "(`docker info`, `runner doctor`)."
                )
            raise SandboxRefused(
                f"The Docker engine refused the sandbox: {explanation}", hint=hint
            ) from e
        except (DockerException, requests.exceptions.RequestException) as e:
            raise self._failed(e) from e
        return str(created["Id"])

    def attach(self, container_id: str) -> OutputStream:
        """Stream stdout and stderr separately; call before ``start`` to miss nothing.

        As docker-py's ``attach`` does, without the inspect it makes to learn whether the
        container has a terminal: a sandbox never has one (``container_config``).
        """
        api = self._api

        def attached() -> OutputStream:
            response = api._post(
                api._url("/containers/{0}/attach", container_id),
                headers={"Connection": "Upgrade", "Upgrade": "tcp"},
                params={"logs": 0, "stdout": 1, "stderr": 1, "stream": 1},
                stream=True,
            )
            output = api._read_from_socket(response, True, tty=False, demux=True)
            # Closable from another thread while it is read, as docker-py's own is.
            return CancellableStream(output, response)  # type: ignore[no-any-return]

        return self._call(attached)  # type: ignore[no-any-return]

    def send_stdin(self, container_id: str, data: bytes) -> None:
        """Write ``data`` to a running container's stdin (it must be created stdin_open)."""
        sock = self._call(self._api.attach_socket, container_id, params={"stdin": 1, "stream": 1})
        try:
            raw = getattr(sock, "_sock", sock)
            raw.sendall(data)
        except OSError as e:
            raise self._failed(e) from e
        finally:
            sock.close()

    def open_stdin(self, container_id: str) -> StdinChannel | None:
        """A connection to a created container's stdin, kept for one later write (a warm
        slot's hand-over, so that it costs no request then); None where the engine offers
        none that way (Podman: the hand-over then attaches as it is made)."""
        if self.kind() == "podman":
            return None
        try:
            sock = self._api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
        except (DockerException, requests.exceptions.RequestException):
            return None
        return StdinChannel(getattr(sock, "_sock", sock), sock)

    def start(self, container_id: str) -> None:
        """Start the container. ``SandboxStartError`` when the runtime failed to set it
        up (worth one fresh attempt); not when the container was removed meanwhile,
        which is a run being cancelled (its sweep removes containers by label)."""
        try:
            self._api.start(container_id)
        except APIError as e:
            if any(failure in str(e.explanation) for failure in RUNTIME_FAILURES):
                if not self._still_there(container_id):
                    raise ExperimentExecutionError(
                        "The sandbox was removed while it started (its run was cancelled)."
                    ) from e
                raise SandboxStartError(
                    f"The runtime could not start the sandbox: {e.explanation}",
                    hint="`runner doctor` checks each runtime; see /var/log/dockerd.log.",
                ) from e
            raise self._failed(e) from e
        except (DockerException, requests.exceptions.RequestException) as e:
            raise self._failed(e) from e

    def _still_there(self, container_id: str) -> bool:
        try:
            self._api.inspect_container(container_id)
        except NotFound:
            return False
        except DockerException:
            return True  # not known to be gone
        return True

    def wait(self, container_id: str, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds; the exit code, or None if still running.

        ``EngineUnavailable`` when the engine went away meanwhile.
        """
        try:
            if self.kind() == "podman":
                return self._podman_wait(container_id, max(timeout, 0.001))
            status = self._api.wait(container_id, timeout=max(timeout, 0.001))
        except (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout) as e:
            # docker-py reports a wait that ran out of time as a connection error too: the
            # engine tells which, by answering or not.
            if self.answers():
                return None
            raise self._failed(e) from e
        except (DockerException, requests.exceptions.RequestException) as e:
            raise self._failed(e) from e
        return int(status["StatusCode"])

    def _podman_wait(self, container_id: str, timeout: float) -> int:
        """Podman's own wait, which sleeps between checks (its compatible one busy-loops)."""
        api = self._api
        response = api._post(
            api._url("/libpod/containers/{0}/wait", container_id),
            params={"condition": "exited", "interval": PODMAN_WAIT_INTERVAL},
            timeout=timeout,
        )
        return int(api._result(response, json=True))

    def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        """Signal the container's init (SIGKILL: all of it); one already stopped is fine."""
        try:
            self._api.kill(container_id, signal=signal)
        except NotFound:
            return
        except APIError as e:
            if e.status_code == 409:  # not running any more
                return
            raise self._failed(e) from e
        except (DockerException, requests.exceptions.RequestException) as e:
            raise self._failed(e) from e

    def inspect(self, container_id: str) -> dict[str, Any]:
        """The engine's full record of a container (``docker inspect``).

        From Podman, its own API's record, which tells what the compatible one
        does not: the OCI runtime really used (the compatible answer says "oci"),
        the capability sets, and mounts with their options. Its ``HostConfig``
        and ``Config`` are what the compatible answer is made from, with the
        same names and values (capabilities keep their ``CAP_`` prefix).
        """
        if self.kind() != "podman":
            return dict(self._call(self._api.inspect_container, container_id))
        api = self._api
        return dict(
            self._call(
                lambda: api._result(
                    api._get(api._url("/libpod/containers/{0}/json", container_id)), json=True
                )
            )
        )

    def describe(self) -> str:
        """Which engine this is, for messages: product, version and address."""
        if self._description is None:
            try:
                version = self._engine_version()
            except ExperimentExecutionError:
                return f"the engine at {self._api.base_url}"  # it does not answer now
            product = "Podman Engine" if self.kind() == "podman" else "Docker Engine"
            self._description = f"{product} {version.get('Version', '?')} at {self._api.base_url}"
        return self._description

    def kind(self) -> EngineKind:
        """Whether Docker or Podman answers (they differ in what they apply; see podman.py).

        Told by the engine's ping, which names Podman (``PODMAN_HEADER``), rather than
        its ``version``, which Podman takes half a second to answer; an answer without
        the header is checked against the version's components.
        """
        if self._kind is None:
            api = self._api
            ping = self._call(lambda: api._get(api._url("/_ping"), timeout=30))
            kind = _kind_from(ping.headers)
            if kind == "docker":
                components = self._engine_version().get("Components") or []
                if any(c.get("Name") == PODMAN_PRODUCT for c in components):
                    kind = "podman"
            self._kind = kind
        return self._kind

    def _engine_version(self) -> dict[str, Any]:
        if self._version is None:
            self._version = dict(self._call(self._api.version))
        return self._version

    def state(self, container_id: str) -> ContainerState:
        data = self._call(self._api.inspect_container, container_id)
        state = data["State"]
        return ContainerState(
            running=bool(state.get("Running")),
            exit_code=int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled")),
        )

    def remove(self, container_id: str) -> None:
        """Remove the container, killing it if it still runs; gone already is fine.

        An engine that does not answer keeps it in mind (``remove_leftovers``) and raises
        ``EngineUnavailable``.
        """
        try:
            self._remove(container_id)
        except EngineUnavailable:
            with self._leftovers_lock:
                self._leftovers.add(("container", container_id))
            raise
        with self._leftovers_lock:
            announced = self._announced.pop(container_id, container_id)
        lifeline().release(self.address, "c", announced)

    def _remove(self, container_id: str) -> None:
        for attempt in range(1, REMOVE_ATTEMPTS + 1):
            try:
                self._api.remove_container(container_id, force=True, v=True)
                return
            except NotFound:
                return
            except APIError as e:
                if e.status_code == 409 and "already in progress" in str(e.explanation):
                    return
                if e.status_code == 500 and attempt < REMOVE_ATTEMPTS and self.kind() == "podman":
                    time.sleep(REMOVE_RETRY_DELAY * attempt)
                    continue
                raise self._failed(e) from e
            except (DockerException, requests.exceptions.RequestException) as e:
                raise self._failed(e) from e

    # files over the API ----------------------------------------------------

    def create_volume(
        self,
        labels: Mapping[str, str],
        driver_opts: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> VolumeInfo:
        """A new volume carrying ``labels``; its name and where the engine keeps it.

        ``driver_opts`` go to the local driver (say, a tmpfs with its options).
        With a ``name`` that exists already, that volume is returned. One made for a
        caller without a name is named and announced to its lifeline first (``create``).
        """
        announced = None
        if owned(labels) and name is None:
            name = announced = own_name()
            lifeline().hold(self.address, "v", announced)
        return self._create_volume(labels, driver_opts, name)  # announced, as ``create``

    def _create_volume(
        self, labels: Mapping[str, str], driver_opts: Mapping[str, str] | None, name: str | None
    ) -> VolumeInfo:
        try:
            data = self._api.create_volume(
                name=name,
                labels=dict(labels),
                driver_opts=dict(driver_opts) if driver_opts else None,
            )
        except APIError as e:
            if name is None or "already exists" not in str(e.explanation):
                raise self._failed(e) from e
            data = self._call(self._api.inspect_volume, name)  # Podman refuses a second create
        except (DockerException, requests.exceptions.RequestException) as e:
            raise self._failed(e) from e
        return VolumeInfo(
            name=str(data["Name"]),
            mountpoint=str(data.get("Mountpoint") or ""),
            labels=dict(data.get("Labels") or {}),
        )

    def remove_volume(self, name: str) -> None:
        """Remove a volume; gone already is fine. Kept in mind, as a container is, when the
        engine does not answer (``remove_leftovers``)."""
        try:
            self._api.remove_volume(name, force=True)
        except NotFound:
            pass
        except (DockerException, requests.exceptions.RequestException) as e:
            error = self._failed(e)
            if isinstance(error, EngineUnavailable):
                with self._leftovers_lock:
                    self._leftovers.add(("volume", name))
            raise error from e
        lifeline().release(self.address, "v", name)

    def answers(self) -> bool:
        """Whether the engine answers now (a ping, at most a few seconds)."""
        try:
            return bool(self._api._result(self._api._get(self._api._url("/_ping"), timeout=5)))
        except (DockerException, requests.exceptions.RequestException):
            return False

    def remove_leftovers(self) -> None:
        """Remove what could not be removed while the engine did not answer; what it still
        cannot remove stays in mind."""
        with self._leftovers_lock:
            leftovers, self._leftovers = self._leftovers, set()
        for kind, name in sorted(leftovers, reverse=True):  # containers before volumes
            with contextlib.suppress(ExperimentExecutionError):
                if kind == "container":
                    self.remove(name)
                else:
                    self.remove_volume(name)

    def volumes(self, label: str) -> list[VolumeInfo]:
        """All volumes that carry ``label``."""
        data = self._call(self._api.volumes, filters={"label": label})
        return [
            VolumeInfo(
                name=str(row["Name"]),
                mountpoint=str(row.get("Mountpoint") or ""),
                labels=dict(row.get("Labels") or {}),
            )
            for row in (data or {}).get("Volumes") or []
        ]

    def put_archive(self, container_id: str, path: str, data: bytes | BinaryIO) -> None:
        """Unpack the tar ``data`` at ``path`` in a (created, not necessarily started) container."""
        ok = self._call(self._api.put_archive, container_id, path, data)
        if not ok:
            raise ExperimentExecutionError(
                f"The engine refused the files for {path}.",
                hint="check the engine's log; the files go in through its archive API.",
            )

    def get_archive(self, container_id: str, path: str) -> bytes:
        """The tar of ``path`` in a container (which may never have been started)."""
        stream, _ = self._call(self._api.get_archive, container_id, path)
        return b"".join(stream)

    def get_archive_to(self, container_id: str, path: str, dest: Path) -> None:
        """Stream the tar of ``path`` in a container into the file ``dest``."""
        stream, _ = self._call(self._api.get_archive, container_id, path, chunk_size=1 << 20)
        with dest.open("wb") as file:
            for chunk in stream:
                file.write(chunk)

    def containers(self, label: str) -> list[ContainerInfo]:
        """All containers, running or not, that carry ``label``."""
        rows = self._call(self._api.containers, all=True, filters={"label": label})
        return [
            ContainerInfo(
                id=str(row["Id"]),
                name=str((row.get("Names") or ["?"])[0]).lstrip("/"),
                status=str(row.get("Status", "")),
                labels=dict(row.get("Labels") or {}),
            )
            for row in rows
        ]

    def _failed(self, e: Exception) -> ExperimentExecutionError:
        return _engine_error(e, self._api.base_url)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotFound as e:
            raise ExperimentExecutionError(
                f"Docker object not found: {e.explanation or e}",
                hint="it may have been removed by `runner cleanup` or another process.",
            ) from e
        except (DockerException, requests.exceptions.RequestException) as e:
            raise self._failed(e) from e


def _client_from_env() -> tuple[docker.DockerClient, Mapping[str, str]]:
    """``docker.from_env()``, on the API version the engine's ping names; and that ping.

    docker-py would ask the engine's ``version`` for it, which Podman takes half a
    second to answer; its ping says the same (``Api-Version``) at once.
    """
    client: docker.DockerClient | None = None
    try:
        # With a version given docker-py asks nothing. Parallel runs each hold an attach
        # stream and a wait request.
        client = docker.from_env(version=DEFAULT_DOCKER_API_VERSION, max_pool_size=64)
        api = client.api
        ping = api._get(api._url("/_ping", versioned_api=False), timeout=60)
        api._raise_for_status(ping)
        version = ping.headers.get("Api-Version") or "auto"  # without it, as docker-py does
        if version != DEFAULT_DOCKER_API_VERSION:
            client.close()
            client = docker.from_env(version=version, max_pool_size=64)
        return client, ping.headers
    except (DockerException, requests.exceptions.RequestException) as e:
        if client is not None:
            client.close()
        raise ExperimentExecutionError(
            f"Cannot reach a Docker engine: {e}", hint=ENGINE_HINT
        ) from e


def _kind_from(ping_headers: Mapping[str, str]) -> EngineKind:
    return "podman" if ping_headers.get(PODMAN_HEADER) else "docker"


def _engine_error(e: Exception, where: str) -> ExperimentExecutionError:
    """The project's error for what the engine at ``where`` answered, or did not."""
    if isinstance(e, requests.exceptions.ConnectionError) and not isinstance(
        e, requests.exceptions.ReadTimeout
    ):
        return EngineUnavailable(f"The Docker engine at {where} stopped answering: {e}")
    # An API error is an answer: the engine runs. Anything else may mean it does not.
    if isinstance(e, APIError):
        return EngineError(f"Docker engine error: {e}", hint=ANSWERED_HINT)
    return ExperimentExecutionError(f"Docker engine error: {e}", hint=ENGINE_HINT)
