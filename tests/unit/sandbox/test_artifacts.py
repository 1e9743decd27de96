"""Artifacts: the tar stream from the sandbox is untrusted; only regular files come back."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from runner.sandbox.artifacts import (
    ARTIFACTS_MARKER,
    SKIPPED_KEY,
    ArtifactSink,
    Collected,
    OutputLimits,
    check_name,
    extract,
)
from runner.sandbox.streams import OutputCollector
from tests.unit.fakes import FakeEngine, FakeStream

LIMITS = OutputLimits(max_bytes=10_000, max_files=5, max_file_size=4_000)
SPEC = ExperimentSpec(experiment_name="outputs", model_type="SVC")

Entry = tuple[str, bytes | None, dict[str, Any]]


def tar_of(*entries: Entry) -> bytes:
    """A tar stream: (name, content or None for a header-only entry, TarInfo fields)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, fields in entries:
            info = tarfile.TarInfo(name)
            for key, value in fields.items():
                setattr(info, key, value)
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def file(name: str, content: bytes = b"data") -> Entry:
    return (name, content, {})


def special(name: str, kind: bytes, **fields: Any) -> Entry:
    return (name, None, {"type": kind, **fields})


@pytest.fixture
def collect(tmp_path: Path) -> Callable[..., Collected]:
    def run(data: bytes, limits: OutputLimits = LIMITS, **kwargs: Any) -> Collected:
        sink = ArtifactSink(limits.stream_limit)
        sink.write(data)
        try:
            return extract(sink.stream(), tmp_path / "out", limits, **kwargs)
        finally:
            sink.close()

    return run


def tree(root: Path) -> list[str]:
    """Every path under ``root``, symlinks not followed, relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_regular_files_come_back_with_name_size_and_sha256(
    collect: Callable[..., Collected], tmp_path: Path
) -> None:
    """Regular files (nested too) are written under the outputs with their sha256."""
    got = collect(tar_of(file("plot.png", b"\x89PNG..."), file("figs/a.txt", b"a")))
    assert [a.name for a in got.artifacts] == ["figs/a.txt", "plot.png"]
    plot = got.artifacts[1]
    assert plot.path == str(tmp_path / "out" / "plot.png")
    assert plot.size == 7
    assert plot.sha256 == hashlib.sha256(b"\x89PNG...").hexdigest()
    assert Path(plot.path).read_bytes() == b"\x89PNG..."
    assert got.message() is None


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (special("leak", tarfile.SYMTYPE, linkname="/etc/passwd"), "a symlink"),
        (special("hard", tarfile.LNKTYPE, linkname="plot.png"), "a hard link"),
        (special("fifo", tarfile.FIFOTYPE), "a FIFO"),
        (special("null", tarfile.CHRTYPE, devmajor=1, devminor=3), "a device"),
        (special("disk", tarfile.BLKTYPE, devmajor=8, devminor=0), "a device"),
        (file("../escape"), "'..' part"),
        (file("a/../../escape"), "'..' part"),
        (file("/etc/cron.d/x"), "an absolute name"),
        (file("bell\x07.txt"), "control characters"),
        (file("esc\x1b[31m.txt"), "control characters"),
        (file("c1\x9b.txt"), "control characters"),
        (file("x" * 300), "too long"),
    ],
)
def test_anything_but_a_regular_file_under_a_plain_name_is_refused_and_reported(
    collect: Callable[..., Collected], tmp_path: Path, entry: Entry, reason: str
) -> None:
    """Symlinks, hard links, FIFOs, devices and odd names: not written, named in the message."""
    got = collect(tar_of(file("plot.png"), entry))
    assert [a.name for a in got.artifacts] == ["plot.png"]
    assert tree(tmp_path) == ["out", "out/plot.png"]
    message = got.message()
    assert message is not None and reason in message


def test_a_name_that_is_not_utf8_is_refused(collect: Callable[..., Collected]) -> None:
    """A name with bytes that are not UTF-8 is refused (and shown escaped)."""
    got = collect(tar_of(file(b"caf\xe9".decode("utf-8", "surrogateescape"))))
    assert got.artifacts == []
    assert "not UTF-8" in (got.message() or "")
    assert check_name("café.csv") is None


def test_the_sandboxs_own_links_to_the_script_files_pass_without_a_word(
    collect: Callable[..., Collected],
) -> None:
    """Top-level links to <script dir>/<name> are the runner's own; other links are reported."""
    got = collect(
        tar_of(
            special("data.csv", tarfile.SYMTYPE, linkname="/exp/data.csv"),
            special("other.csv", tarfile.SYMTYPE, linkname="/exp/data.csv"),
        ),
        own_links=Path("/exp"),
    )
    assert got.refused == {"a symlink": ["other.csv"]}


def test_a_million_tiny_files_hit_the_count_limit_with_a_message(
    collect: Callable[..., Collected],
) -> None:
    """Past the file limit nothing more is written, and the message gives the count."""
    data = tar_of(*(file(f"f{i:05d}", b"x") for i in range(2000)))
    got = collect(data)
    assert len(got.artifacts) == LIMITS.max_files
    message = got.message() or ""
    assert "1995 entries not copied (over the limit of 5 files" in message
    assert "RUNNER_OUTPUTS_MAX_FILES" in message


def test_the_collectors_own_reports_are_worded(collect: Callable[..., Collected]) -> None:
    """Entries the sandbox's collector did not send (over a limit) are reported by reason."""
    skipped = [
        ("big.bin", None, {"pax_headers": {SKIPPED_KEY: "file size 999999999"}}),
        ("many", None, {"pax_headers": {SKIPPED_KEY: "files"}}),
        ("link", None, {"pax_headers": {SKIPPED_KEY: "hard link"}}),
    ]
    message = collect(tar_of(*skipped)).message() or ""
    assert "per file, RUNNER_OUTPUTS_MAX_FILE_SIZE): 'big.bin'" in message
    assert "RUNNER_OUTPUTS_MAX_FILES): 'many'" in message
    assert "(a hard link): 'link'" in message


def test_one_huge_file_hits_the_size_limit_without_being_read(
    collect: Callable[..., Collected], tmp_path: Path
) -> None:
    """A file over the per-file limit is not written; nor is one that would pass the total."""
    got = collect(
        tar_of(
            file("huge.bin", b"\0" * (LIMITS.max_file_size + 1)),
            file("a", b"1" * 3500),
            file("b", b"2" * 3500),
            file("c", b"3" * 3500),
        )
    )
    assert [a.name for a in got.artifacts] == ["a", "b"]
    message = got.message() or ""
    assert "per file, RUNNER_OUTPUTS_MAX_FILE_SIZE): 'huge.bin'" in message
    assert "in all, RUNNER_OUTPUTS_MAX_BYTES): 'c'" in message
    assert tree(tmp_path / "out") == ["a", "b"]


def test_a_header_claiming_gigabytes_is_refused_before_any_read(
    collect: Callable[..., Collected],
) -> None:
    """A forged size is checked against the limits first; nothing is allocated for it."""
    data = bytearray(tar_of(file("forged", b"x")))
    header = tarfile.TarInfo("forged")
    header.size = 50 * 1024**3
    data[:512] = header.tobuf(tarfile.GNU_FORMAT)[:512]
    got = collect(bytes(data))
    assert got.artifacts == []
    assert "forged" in (got.message() or "")


def test_a_forged_pax_header_of_gigabytes_is_not_read_into_memory(
    collect: Callable[..., Collected],
) -> None:
    """A PAX header's size is trusted only up to a bound; past it the stream is refused."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 2 * 1024**3
    got = collect(pax.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 4096)
    assert got.artifacts == []
    assert "over the limit" in (got.message() or "")


def test_a_stream_cut_short_keeps_what_came_and_says_so(
    collect: Callable[..., Collected],
) -> None:
    """The files before the cut are kept; the message says the stream was cut short."""
    data = tar_of(file("first", b"1" * 600), file("second", b"2" * 600))
    got = collect(data[: 512 + 1024 + 512 + 100])
    assert [a.name for a in got.artifacts] == ["first"]
    assert "cut short" in (got.message() or "")


def test_nothing_is_written_through_a_symlink_in_the_outputs_directory(
    collect: Callable[..., Collected], tmp_path: Path
) -> None:
    """Existing links in the outputs are replaced or refused, never followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "plot.png").symlink_to(outside / "victim")
    (out / "figs").symlink_to(outside)
    got = collect(tar_of(file("plot.png", b"new"), file("figs/victim", b"evil")))
    assert (outside / "victim").read_text() == "keep"
    assert tree(outside) == ["victim"]
    assert not (out / "plot.png").is_symlink() and (out / "plot.png").read_bytes() == b"new"
    assert [a.name for a in got.artifacts] == ["plot.png"]
    assert "'figs' in the outputs is not a directory" in (got.message() or "")


def test_a_file_then_a_directory_of_the_same_name_is_refused(
    collect: Callable[..., Collected],
) -> None:
    """A later entry that needs an earlier file to be a directory is refused, not forced."""
    got = collect(tar_of(file("a"), file("a/b")))
    assert [a.name for a in got.artifacts] == ["a"]
    assert "'a/b'" in (got.message() or "")


def test_the_sink_caps_the_stream_and_says_so(tmp_path: Path) -> None:
    """More stream than the limits allow is cut at the cap, reported, never spooled whole."""
    sink = ArtifactSink(limit=1000)
    sink.write(b"x" * 600)
    sink.write(b"y" * 600)
    assert sink.overflow and sink.received == 1000
    sink.close()


def test_the_collector_splits_stdout_at_the_marker_across_frames() -> None:
    """Stdout before the marker is the script's; after it, the artifact stream (split anywhere)."""
    payload = b'{"success": true}\n' + ARTIFACTS_MARKER + b"TARDATA"
    frames: list[tuple[bytes | None, bytes | None]] = [
        (payload[i : i + 5], None) for i in range(0, len(payload), 5)
    ]
    sink = ArtifactSink(limit=100)
    lines: list[str] = []
    collector = OutputCollector(
        FakeStream(frames), 1000, lambda _s, line: lines.append(line), artifacts=sink
    )
    collector.start()
    captured = collector.finish(1.0)
    assert captured.stdout == '{"success": true}\n'
    assert lines == ['{"success": true}']
    assert sink.started and sink.stream().read(7) == b"TARDATA"
    sink.close()


def test_a_partial_marker_at_the_end_stays_stdout() -> None:
    """Bytes that only looked like the start of a marker are the script's output after all."""
    sink = ArtifactSink(limit=100)
    collector = OutputCollector(
        FakeStream([(b"out\n" + ARTIFACTS_MARKER[:5], None)]), 1000, artifacts=sink
    )
    collector.start()
    assert collector.finish(1.0).stdout == "out\n" + ARTIFACTS_MARKER[:5].decode()
    assert not sink.started
    sink.close()


# the runner with outputs on and off ---------------------------------------------------


def test_outputs_off_changes_nothing(script: Path) -> None:
    """Without outputs_dir: no /outputs tmpfs, no OUTPUT_DIR, the plain wrapper."""
    engine = FakeEngine()
    result = ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0)
    created = engine.created[0]
    assert set(created["tmpfs"]) == {"/tmp"}
    assert "OUTPUT_DIR" not in created["environment"]
    assert "experiment-runner-artifacts" not in " ".join(created["command"])
    assert result.artifacts == [] and result.artifacts_message is None


def test_outputs_on_come_back_into_outputs_dir(script: Path, tmp_path: Path) -> None:
    """A capped /outputs tmpfs and $OUTPUT_DIR in the sandbox; its files come back listed."""
    stream = ARTIFACTS_MARKER + tar_of(file("model.pkl", b"pickle"))
    engine = FakeEngine(stdout=b'{"success": true, "metrics": {}}\n' + stream)
    runner = ExperimentRunner(timeout=5, engine=engine, outputs_dir=tmp_path / "out")
    result = runner.run(script, SPEC, 0)
    created = engine.created[0]
    assert created["tmpfs"]["/outputs"].startswith("rw,noexec,nosuid,nodev,size=")
    assert created["environment"]["OUTPUT_DIR"] == "/outputs"
    assert result.success
    assert [(a.name, a.size) for a in result.artifacts] == [("model.pkl", 6)]
    assert (tmp_path / "out" / "model.pkl").read_bytes() == b"pickle"
    assert result.stdout == '{"success": true, "metrics": {}}\n'


def test_outputs_per_run_and_the_missing_stream_is_reported(script: Path, tmp_path: Path) -> None:
    """run(outputs_dir=...) turns outputs on for one run; a run that sent none says so."""
    engine = FakeEngine()
    result = ExperimentRunner(timeout=5, engine=engine).run(
        script, SPEC, 0, outputs_dir=tmp_path / "o"
    )
    assert "/outputs" in engine.created[0]["tmpfs"]
    assert result.artifacts == []
    assert "none were collected" in (result.artifacts_message or "")


def test_a_timeout_with_outputs_ends_the_script_then_collects(script: Path, tmp_path: Path) -> None:
    """At the deadline the sandbox gets SIGALRM (its sh kills the script), then the outputs."""
    engine = FakeEngine(
        wait_results=[None, 137], stdout=ARTIFACTS_MARKER + tar_of(file("partial.csv"))
    )
    result = ExperimentRunner(timeout=5, engine=engine, outputs_dir=tmp_path / "out").run(
        script, SPEC, 0
    )
    assert result.timed_out
    assert engine.calls == ["create", "attach", "start", "wait", "kill SIGALRM", "wait", "remove"]
    assert [a.name for a in result.artifacts] == ["partial.csv"]


def test_an_outputs_tmpfs_with_other_caps_stops_the_run(script: Path, tmp_path: Path) -> None:
    """The engine must report exactly the caps asked for /outputs; else nothing starts."""
    engine = FakeEngine(quietly={"Tmpfs": {"/tmp": "rw,size=256m", "/outputs": "rw"}})
    with pytest.raises(Exception, match="capped /outputs tmpfs"):
        ExperimentRunner(timeout=5, engine=engine, outputs_dir=tmp_path / "out").run(
            script, SPEC, 0
        )
    assert "start" not in engine.calls


def test_an_outputs_tmpfs_without_outputs_stops_the_run(script: Path) -> None:
    """With outputs off, a writable /outputs is as unwelcome as any other writable mount."""
    engine = FakeEngine(quietly={"Tmpfs": {"/tmp": "rw,size=256m", "/outputs": "rw"}})
    with pytest.raises(Exception, match="no writable mount but /tmp"):
        ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0)


def test_limits_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """RUNNER_OUTPUTS_* set the limits; the tmpfs is as big as the byte limit."""
    from runner.core.settings import ExperimentDefaults

    monkeypatch.setenv("RUNNER_OUTPUTS_MAX_BYTES", "1m")
    monkeypatch.setenv("RUNNER_OUTPUTS_MAX_FILES", "7")
    monkeypatch.setenv("RUNNER_OUTPUTS_MAX_FILE_SIZE", "2k")
    limits = OutputLimits.from_settings(ExperimentDefaults())
    assert limits == OutputLimits(max_bytes=1024**2, max_files=7, max_file_size=2048)
    assert f"size={1024**2}," in limits.tmpfs_options()
    assert os.sep == "/"


def test_a_pool_made_with_outputs_serves_runs_with_outputs_only(tmp_path: Path) -> None:
    """Slots of a runner with outputs have /outputs; a run with other outputs goes cold."""
    from runner.core.settings import ExperimentDefaults

    stream = ARTIFACTS_MARKER + tar_of(file("plot.png"))
    engine = FakeEngine(wait_results=[0, 0, 0], stdout=b"{}\n" + stream)
    root = tmp_path / "experiments"
    script = root / "exp" / "experiment.py"
    script.parent.mkdir(parents=True)
    script.write_text("print(1)\n")
    with ExperimentRunner(
        timeout=5,
        engine=engine,
        warm_pool=1,
        pool_root=root,
        outputs_dir=tmp_path / "out",
        settings=ExperimentDefaults(cache_dir=tmp_path / "cache"),
    ) as runner:
        assert runner.wait_for_warm(10)
        slot = engine.created[0]
        assert "/outputs" in slot["tmpfs"] and slot["environment"]["OUTPUT_DIR"] == "/outputs"
        warm = runner.run(script, SPEC, 0)
        assert warm.warm_start
        assert [a.name for a in warm.artifacts] == ["plot.png"]
        runner.output_limits = OutputLimits(max_bytes=1, max_files=1, max_file_size=1)
        assert runner.wait_for_warm(10)
        cold = runner.run(script, SPEC, 0)
        assert not cold.warm_start


def test_pool_outputs_makes_slots_for_runs_that_give_their_own_outputs(tmp_path: Path) -> None:
    """With pool_outputs and no outputs_dir, slots have /outputs and a run's own outputs_dir
    goes warm; without it, that run is cold (the slots were made without outputs)."""
    from runner.core.settings import ExperimentDefaults

    root = tmp_path / "experiments"
    script = root / "exp" / "experiment.py"
    script.parent.mkdir(parents=True)
    script.write_text("print(1)\n")
    for pool_outputs in (True, False):
        stream = ARTIFACTS_MARKER + tar_of(file("plot.png"))
        engine = FakeEngine(wait_results=[0, 0], stdout=b"{}\n" + stream)
        with ExperimentRunner(
            timeout=5,
            engine=engine,
            warm_pool=1,
            pool_root=root,
            pool_outputs=pool_outputs,
            settings=ExperimentDefaults(cache_dir=tmp_path / "cache"),
        ) as runner:
            assert runner.outputs_dir is None
            assert runner.wait_for_warm(10)
            assert ("/outputs" in engine.created[0]["tmpfs"]) is pool_outputs
            result = runner.run(script, SPEC, 0, outputs_dir=tmp_path / f"out-{pool_outputs}")
            assert result.warm_start is pool_outputs
            assert [a.name for a in result.artifacts] == ["plot.png"]


def test_artifacts_are_recorded_in_the_history(script: Path, tmp_path: Path) -> None:
    """The history keeps each result's artifacts and message; run_many gives each job a dir."""
    from runner.results.history import ResultsHistory

    stream = ARTIFACTS_MARKER + tar_of(file("model.pkl", b"m"))
    engine = FakeEngine(wait_results=[0, 0], stdout=b"{}\n" + stream)
    history = ResultsHistory(tmp_path / "results.jsonl")
    runner = ExperimentRunner(
        timeout=5, engine=engine, outputs_dir=tmp_path / "out", history=history
    )
    results = runner.run_many([(script, SPEC, 0), (script, SPEC, 1)], max_workers=1)
    assert [Path(r.artifacts[0].path).parent.name for r in results] == [
        "0000-outputs",
        "0001-outputs",
    ]
    recorded, _ = history.read()
    assert sorted(r.artifacts[0].path for r in recorded) == sorted(
        r.artifacts[0].path for r in results
    )
    assert recorded[0].artifacts[0].sha256 == hashlib.sha256(b"m").hexdigest()


def test_a_batch_jobs_directory_that_is_a_symlink_is_replaced_not_followed(
    script: Path, tmp_path: Path
) -> None:
    """A symlink where a job's NNNN-NAME directory goes: the files land in a directory made
    there, under outputs_dir; the symlink's target is never written."""
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "0000-outputs").symlink_to(outside)
    engine = FakeEngine(stdout=ARTIFACTS_MARKER + tar_of(file("model.pkl")))
    runner = ExperimentRunner(timeout=5, engine=engine, outputs_dir=out)
    (result,) = runner.run_many([(script, SPEC, 0)])
    assert [a.path for a in result.artifacts] == [str(out / "0000-outputs" / "model.pkl")]
    assert (out / "0000-outputs").is_dir() and not (out / "0000-outputs").is_symlink()
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("where", ["script dir", "its parent", "inside it", "an input's dir"])
def test_outputs_that_overlap_the_script_or_an_input_are_refused_before_any_container(
    script: Path, tmp_path: Path, where: str
) -> None:
    """An outputs directory that is, holds or lies in the script's directory or an input
    would let the script replace its own files: refused with a clear error, nothing runs."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("x\n1\n")
    outputs = {
        "script dir": script.parent,
        "its parent": tmp_path,
        "inside it": script.parent / "out",
        "an input's dir": data,
    }[where]
    engine = FakeEngine()
    runner = ExperimentRunner(timeout=5, engine=engine, inputs=[data / "train.csv"])
    with pytest.raises(ExperimentExecutionError, match="overlap"):
        runner.run(script, SPEC, 0, outputs_dir=outputs)
    assert engine.created == []
