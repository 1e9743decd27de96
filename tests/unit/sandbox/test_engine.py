from unittest import mock

import docker
import pytest
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from runner import ExperimentExecutionError
from runner.sandbox.engine import DockerEngine, EngineUnavailable, SandboxStartError

DOCKER_VERSION = {"Version": "20.10.24", "Components": [{"Name": "Engine"}]}
PODMAN_VERSION = {"Version": "4.3.1", "Components": [{"Name": "Podman Engine"}]}


def engine_with(api: mock.Mock, version: dict[str, object] = DOCKER_VERSION) -> DockerEngine:
    """An engine on ``api``, whose ping and version answer as Docker's or Podman's do."""
    client = mock.Mock(spec=docker.DockerClient)
    api.version.return_value = version
    podman = version is PODMAN_VERSION
    api._get.return_value.headers = {"Libpod-Api-Version": "4.3.1"} if podman else {}
    client.api = api
    return DockerEngine(client)


def test_unreachable_engine_raises_with_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """No daemon: ExperimentExecutionError that says how to start one, chained from docker's."""
    monkeypatch.setattr(docker, "from_env", mock.Mock(side_effect=DockerException("refused")))
    with pytest.raises(ExperimentExecutionError, match="Cannot reach a Docker engine") as info:
        DockerEngine()
    assert "setup.sh" in str(info.value)
    assert isinstance(info.value.__cause__, DockerException)


def test_missing_image_raises_with_build_hint() -> None:
    """A missing image names the image and the command that builds it."""
    api = mock.Mock()
    api.inspect_image.side_effect = ImageNotFound("no such image")
    with pytest.raises(ExperimentExecutionError, match="runner image build") as info:
        engine_with(api).image_id("experiment-runner/sklearn:x")
    assert isinstance(info.value.__cause__, ImageNotFound)


def test_wait_timeout_returns_none() -> None:
    """docker-py's ConnectionError on an expired wait reads as "still running"."""
    api = mock.Mock()
    api.wait.side_effect = requests.exceptions.ConnectionError("read timed out")
    assert engine_with(api).wait("c", 1.0) is None


def test_kill_and_remove_tolerate_a_container_already_gone() -> None:
    """Killing a stopped container or removing a removed one is not an error."""
    api = mock.Mock()
    api.kill.side_effect = APIError("conflict", response=mock.Mock(status_code=409))
    api.remove_container.side_effect = NotFound("gone")
    engine = engine_with(api)
    engine.kill("c")
    engine.remove("c")
    api.kill.assert_called_once_with("c", signal="SIGKILL")
    api.remove_container.assert_called_once_with("c", force=True, v=True)


def test_other_engine_errors_are_wrapped() -> None:
    """Any other Docker error surfaces as ExperimentExecutionError, from the original."""
    api = mock.Mock()
    api.start.side_effect = APIError("boom", response=mock.Mock(status_code=500))
    with pytest.raises(ExperimentExecutionError) as info:
        engine_with(api).start("c")
    assert isinstance(info.value.__cause__, APIError)


def test_a_bind_source_the_engine_lacks_points_at_transfer() -> None:
    """A remote engine's "bind source path does not exist" hints at copying, not at limits."""
    client = mock.Mock(spec=docker.DockerClient)
    client.api = mock.Mock(_version="1.41")
    response = mock.Mock(status_code=400)
    client.api.create_container.side_effect = APIError(
        "400",
        response=response,
        explanation='invalid mount config for type "bind": '
        "bind source path does not exist: /tmp/exp",
    )
    with pytest.raises(ExperimentExecutionError, match="transfer='auto' or 'copy'"):
        DockerEngine(client).create("img", ["python"])


def test_the_product_answering_is_told_apart() -> None:
    """Docker and Podman's compatible service are recognised by what they report."""
    assert engine_with(mock.Mock()).kind() == "docker"
    assert engine_with(mock.Mock(), PODMAN_VERSION).kind() == "podman"


def test_podman_is_waited_on_with_its_own_endpoint() -> None:
    """On Podman, waiting uses its sleeping libpod wait, not the compatible busy loop."""
    api = mock.Mock()
    api._url.side_effect = lambda path, *args: path.format(*args)
    api._result.return_value = 3
    assert engine_with(api, PODMAN_VERSION).wait("c", 2.0) == 3
    api.wait.assert_not_called()
    api._post.assert_called_once_with(
        "/libpod/containers/c/wait",
        params={"condition": "exited", "interval": "100ms"},
        timeout=2.0,
    )


def test_podman_wait_running_out_of_time_reads_as_still_running() -> None:
    """An expired Podman wait is None, like Docker's."""
    api = mock.Mock()
    api._post.side_effect = requests.exceptions.ReadTimeout("read timed out")
    assert engine_with(api, PODMAN_VERSION).wait("c", 0.5) is None


def test_podman_removal_is_retried_while_the_container_exits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Podman's 500 on removing a container that is just exiting is retried, then it goes."""
    monkeypatch.setattr("runner.sandbox.engine.time.sleep", lambda _: None)
    api = mock.Mock()
    busy = APIError("busy", response=mock.Mock(status_code=500))
    api.remove_container.side_effect = [busy, busy, None]
    engine_with(api, PODMAN_VERSION).remove("c")
    assert api.remove_container.call_count == 3


def test_docker_removal_errors_are_not_retried() -> None:
    """On Docker a 500 on removal is an error at once (no retry hides a real failure)."""
    api = mock.Mock()
    api.remove_container.side_effect = APIError("boom", response=mock.Mock(status_code=500))
    with pytest.raises(ExperimentExecutionError):
        engine_with(api).remove("c")
    assert api.remove_container.call_count == 1


def test_podman_inspect_reads_its_own_record_alone() -> None:
    """On Podman one call reads its own API's record (the runtime really used, the capability
    sets, mounts with options, and the same HostConfig and Config); the compatible one is
    not asked."""
    api = mock.Mock()
    api._url.side_effect = lambda path, *args: path.format(*args)
    own = {"OCIRuntime": "runc", "EffectiveCaps": [], "HostConfig": {"ReadonlyRootfs": True}}
    api._result.return_value = own
    inspected = engine_with(api, PODMAN_VERSION).inspect("c")
    assert inspected == own
    api._get.assert_called_with("/libpod/containers/c/json")
    api.inspect_container.assert_not_called()


def test_docker_inspect_is_the_compatible_record() -> None:
    """On Docker the one record is Docker's inspect."""
    api = mock.Mock()
    api.inspect_container.return_value = {"HostConfig": {"Runtime": "runc"}}
    assert engine_with(api).inspect("c") == {"HostConfig": {"Runtime": "runc"}}


def test_podman_is_told_by_its_ping_without_asking_its_version() -> None:
    """Podman's ping names it; its version (half a second to answer) is not asked."""
    api = mock.Mock()
    engine = engine_with(api, PODMAN_VERSION)
    assert engine.kind() == "podman"
    assert engine.kind() == "podman"
    api.version.assert_not_called()
    assert api._get.call_count == 1  # asked once


def test_an_answer_without_podmans_header_is_checked_against_the_version() -> None:
    """A ping without the header: the version's components still tell Podman from Docker."""
    api = mock.Mock()
    client = mock.Mock(spec=docker.DockerClient, api=api)
    api._get.return_value.headers = {}
    api.version.return_value = PODMAN_VERSION
    assert DockerEngine(client).kind() == "podman"
    api.version.return_value = DOCKER_VERSION
    assert DockerEngine(client).kind() == "docker"


def test_the_engines_info_is_asked_once() -> None:
    """info() is asked once per engine (a probe and each result's provenance read it)."""
    client = mock.Mock(spec=docker.DockerClient, api=mock.Mock())
    client.info.return_value = {"Runtimes": {"runc": {}}}
    engine = DockerEngine(client)
    assert engine.runtimes() == {"runc"}
    engine.info()["Runtimes"] = {}  # a caller's change stays the caller's
    assert engine.info() == {"Runtimes": {"runc": {}}}
    client.info.assert_called_once_with()


def test_create_asks_the_engine_once_and_translates_the_options() -> None:
    """create is one request (no read-back to make a model), with docker-py's translation
    of the keyword arguments."""
    api = mock.Mock(_version="1.41")
    api.create_container.return_value = {"Id": "abc"}
    engine = engine_with(api)
    assert engine.create("img", ["python"], mem_limit="1g", user="7:7") == "abc"
    (call,) = api.create_container.call_args_list
    assert (call.kwargs["image"], call.kwargs["command"], call.kwargs["user"]) == (
        "img",
        ["python"],
        "7:7",
    )
    assert call.kwargs["host_config"]["Memory"] == 1 << 30
    api.inspect_container.assert_not_called()


def test_attach_streams_both_sides_apart_without_an_inspect() -> None:
    """attach asks once: a sandbox never has a terminal, so nothing is inspected to find out."""
    api = mock.Mock()
    api._url.side_effect = lambda path, *args: path.format(*args)
    engine_with(api).attach("c")
    api._post.assert_called_once_with(
        "/containers/c/attach",
        headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        params={"logs": 0, "stdout": 1, "stderr": 1, "stream": 1},
        stream=True,
    )
    api._read_from_socket.assert_called_once_with(
        api._post.return_value, True, tty=False, demux=True
    )
    api.inspect_container.assert_not_called()


def test_a_client_from_the_environment_takes_the_api_version_from_the_ping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DockerEngine() learns the API version and the engine's kind from one ping, not from
    the engine's version (which docker-py would ask, and Podman takes half a second to
    answer)."""
    made: list[str | None] = []

    def from_env(version: str | None = None, **kwargs: object) -> mock.Mock:
        made.append(version)
        client = mock.Mock(spec=docker.DockerClient, api=mock.Mock())
        client.api._get.return_value.headers = {"Api-Version": "1.41", "Libpod-Api-Version": "4"}
        return client

    monkeypatch.setattr(docker, "from_env", from_env)
    engine = DockerEngine()
    assert made == [docker.constants.DEFAULT_DOCKER_API_VERSION, "1.41"]
    assert engine.kind() == "podman"
    engine._api.version.assert_not_called()


def test_an_engine_whose_ping_fails_cannot_be_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket nobody answers on: the same error and hint as before any request."""
    client = mock.Mock(spec=docker.DockerClient, api=mock.Mock())
    client.api._get.side_effect = requests.exceptions.ConnectionError("refused")
    monkeypatch.setattr(docker, "from_env", lambda **kwargs: client)
    with pytest.raises(ExperimentExecutionError, match="Cannot reach a Docker engine") as info:
        DockerEngine()
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)
    client.close.assert_called_once_with()


def test_an_error_the_engine_answered_does_not_say_start_an_engine() -> None:
    """A running engine's refusal points at its log; only an unreachable one at starting one."""
    api = mock.Mock()
    api.remove_volume.side_effect = APIError("boom", response=mock.Mock(status_code=500))
    with pytest.raises(ExperimentExecutionError) as answered:
        engine_with(api).remove_volume("v")
    assert "its log says why" in str(answered.value)
    assert "start a Docker engine" not in str(answered.value)
    api.volumes.side_effect = requests.ConnectionError("refused")
    with pytest.raises(ExperimentExecutionError, match="start a Docker engine"):
        engine_with(api).volumes("label")


def start_failing_with(explanation: str) -> mock.Mock:
    """An API whose start answers 500 with ``explanation``, as Docker's does."""
    api = mock.Mock()
    api.start.side_effect = APIError(
        "500", response=mock.Mock(status_code=500), explanation=explanation
    )
    return api


def test_a_runtime_that_cannot_create_the_sandbox_is_a_start_failure() -> None:
    """'OCI runtime create failed' (crun on hybrid cgroups, say) is a failure to start."""
    api = start_failing_with(
        "failed to create shim task: OCI runtime create failed: cgroups in "
        "hybrid mode not supported, drop all controllers from cgroupv2: unknown"
    )
    with pytest.raises(SandboxStartError, match="runner doctor"):
        engine_with(api).start("c")


def test_a_sandbox_removed_while_it_starts_is_cancelled_not_a_start_failure() -> None:
    """A cancel's sweep removes the container mid-start: no retry, for nothing is to run."""
    api = start_failing_with(
        "failed to create shim task: OCI runtime create failed: container gone"
    )
    api.inspect_container.side_effect = NotFound("no such container")
    with pytest.raises(ExperimentExecutionError, match="removed while it started") as info:
        engine_with(api).start("c")
    assert not isinstance(info.value, SandboxStartError)


def test_a_wait_on_an_engine_that_went_away_says_so() -> None:
    """A wait that fails and a ping that fails too: the engine stopped answering, named."""
    api = mock.Mock(base_url="http+docker://localhost")
    api.wait.side_effect = requests.exceptions.ConnectionError("Connection aborted.")
    api._get.side_effect = requests.exceptions.ConnectionError("refused")
    with pytest.raises(EngineUnavailable, match="localhost stopped answering") as info:
        engine_with(api).wait("c", 1.0)
    assert not info.value.cut_off


def test_what_cannot_be_removed_during_an_outage_is_removed_when_it_answers() -> None:
    """Removals the engine did not answer are kept and done by remove_leftovers."""
    api = mock.Mock(base_url="x")
    api.remove_container.side_effect = requests.exceptions.ConnectionError("refused")
    api.remove_volume.side_effect = requests.exceptions.ConnectionError("refused")
    engine = engine_with(api)
    with pytest.raises(EngineUnavailable):
        engine.remove("c")
    with pytest.raises(EngineUnavailable):
        engine.remove_volume("v")
    api.remove_container.side_effect = None
    api.remove_volume.side_effect = None
    engine.remove_leftovers()
    api.remove_container.assert_called_with("c", force=True, v=True)
    api.remove_volume.assert_called_with("v", force=True)
    api.remove_container.reset_mock()
    engine.remove_leftovers()  # done: nothing twice
    api.remove_container.assert_not_called()
