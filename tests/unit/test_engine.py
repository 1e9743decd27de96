from unittest import mock

import docker
import pytest
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from runner import ExperimentExecutionError
from runner.engine import DockerEngine


def engine_with(api: mock.Mock) -> DockerEngine:
    client = mock.Mock(spec=docker.DockerClient)
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
    client.api = mock.Mock()
    response = mock.Mock(status_code=400)
    client.containers.create.side_effect = APIError(
        "400",
        response=response,
        explanation='invalid mount config for type "bind": '
        "bind source path does not exist: /tmp/exp",
    )
    with pytest.raises(ExperimentExecutionError, match="transfer='auto' or 'copy'"):
        DockerEngine(client).create("img", ["python"])
