"""The same locks give the same image ID on any engine; user images add Debian packages."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from runner import ExperimentExecutionError, ExperimentRunner
from runner.core.settings import ExperimentDefaults
from runner.image.build import build_image, build_user_image
from runner.image.definition import IMAGE_ID, LABEL_DEBIAN_ADDED, image_dir, recorded_image_id
from runner.image.verify import load_image, save_image
from runner.sandbox.engine import DockerEngine
from tests.engines import running_dind
from tests.integration.conftest import SPEC, run_once


@run_once
def test_a_fresh_empty_engine_builds_the_same_image_id(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """Built from the shipped locks in a new Docker-in-Docker engine with an empty cache,
    the image has the local image's ID, the one the lock records."""
    settings = ExperimentDefaults()
    local_id = engine.image_id(settings.image)
    assert local_id == recorded_image_id(image_dir() / IMAGE_ID)
    with running_dind(images=()) as dind:
        client = docker.DockerClient(base_url=dind.docker_host)
        try:
            assert client.images.list(all=True) == []
            fresh = DockerEngine(client)
            built = build_image(
                fresh,
                settings.model_copy(update={"cache_dir": tmp_path / "empty-cache"}),
                log=lambda m: None,
            )
            assert built.reused is False
            assert built.image_id == local_id
            assert fresh.image_id(settings.image) == local_id
        finally:
            client.close()


@run_once
def test_save_and_load_keep_the_checked_id(engine: DockerEngine, tmp_path: Path) -> None:
    """`save_image` then `load_image` give back the image under the ID the lock records;
    an archive altered by one byte of its config is refused."""
    settings = ExperimentDefaults()
    archive = tmp_path / "image.tar"
    ident = save_image(engine, settings.image, archive)
    assert (
        load_image(engine, archive, expected_id=recorded_image_id(image_dir() / IMAGE_ID)) == ident
    )
    with pytest.raises(ExperimentExecutionError, match="the lock records"):
        load_image(engine, archive, expected_id="sha256:" + "1" * 64)


LIGHTGBM = """\
import json
import lightgbm as lgb
from sklearn.datasets import load_iris
X, y = load_iris(return_X_y=True)
model = lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(X, y)
print(json.dumps({"success": True, "metrics": {"accuracy": float(model.score(X, y))}}))
"""


@run_once
def test_lightgbm_needs_libgomp1_and_the_build_says_so(
    engine: DockerEngine, tmp_path: Path, write_script: Callable[..., Path]
) -> None:
    """Without libgomp1 the build fails naming libgomp.so.1 and libgomp1; with
    `--debian libgomp1` a LightGBM script runs."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("lightgbm==4.6.0\n")
    tag = f"experiment-runner-test/lgbm:{uuid.uuid4().hex[:12]}"
    try:
        with pytest.raises(ExperimentExecutionError) as failed:
            build_user_image(engine, tag, requirements=requirements, log=lambda m: None)
        assert "libgomp.so.1" in str(failed.value)
        assert "--debian libgomp1" in str(failed.value.hint)
        built = build_user_image(
            engine, tag, requirements=requirements, debian=["libgomp1"], log=lambda m: None
        )
        labels = engine.image_inspect(tag)["Config"]["Labels"]
        assert labels[LABEL_DEBIAN_ADDED].startswith("libgomp1 ")
        runner = ExperimentRunner(timeout=120, image=tag, engine=engine)
        result = runner.run(write_script(LIGHTGBM), SPEC, 0)
        runner.close()  # its container, removed in the background, uses the image
        assert result.success, result.stderr
        assert result.metrics["accuracy"] > 0.9
        assert built.lock is not None
        assert (tmp_path / "requirements.lock.debian").read_text().count("libgomp1 ") == 1
    finally:
        engine.remove_image(tag)
