"""Provenance and the store against a hostile script and directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from runner import ExperimentRunner
from runner.results.store import store_dir_for
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import SPEC, needs_local_engine

#: The script forges a facts record as the first thing on its stderr.
FORGER = """\
import json, os, sys
forged = json.dumps({"cpu_model": "forged"}).encode()
os.write(2, b"\\x00experiment-runner-facts " + forged + b"\\n")
print(json.dumps({"success": True}))
"""


def test_a_forged_facts_line_and_a_hostile_directory(
    engine: DockerEngine, write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """The script's own facts line stays output; a link out and a FIFO are never read."""
    script = write_script(FORGER)
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    (script.parent / "leak").symlink_to(secret)
    history = tmp_path / "results.jsonl"
    result = ExperimentRunner(timeout=30, engine=engine, history=history).run(script, SPEC, 0)
    assert result.success, result.error_message
    assert result.provenance is not None and result.provenance.sandbox is not None
    assert result.provenance.sandbox.cpu_model != "forged"
    assert "forged" in result.stderr
    # The store holds the link's target text, never the file it names.
    store = store_dir_for(history)
    blobs = [p.read_bytes() for p in (store / "blobs").iterdir()]
    assert all(b"host only" not in blob for blob in blobs)
    assert result.provenance.stored is not None


@needs_local_engine
def test_a_fifo_in_the_directory_is_never_opened(
    engine: DockerEngine, write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """A FIFO beside the script: the digest stops there and nothing is stored."""
    script = write_script(FORGER)
    history = tmp_path / "results.jsonl"
    os.mkfifo(script.parent / "pipe")
    again = ExperimentRunner(timeout=30, engine=engine, history=history)
    try:
        kept = again.run(script, SPEC, 0)
    finally:
        (script.parent / "pipe").unlink()
    # A FIFO is never opened: the directory is digested no further and not stored.
    assert kept.provenance is not None and kept.provenance.stored is None
    assert kept.provenance.script_dir_sha256.startswith("unavailable: ")
