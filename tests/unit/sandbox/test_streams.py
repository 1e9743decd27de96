import time

import pytest

from runner.sandbox.artifacts import ARTIFACTS_MARKER, ArtifactSink
from runner.sandbox.policy import END_MARKER, EXIT_MARKER
from runner.sandbox.streams import OutputCollector, TailBuffer
from tests.unit.fakes import FakeStream


def test_tail_buffer_keeps_the_last_bytes_and_counts_all() -> None:
    """Past its limit the buffer keeps the tail, reports truncation and the full count."""
    buffer = TailBuffer(10)
    for i in range(100):
        buffer.write(f"{i:03d}\n".encode())
    assert buffer.text() == "7\n098\n099\n"
    assert buffer.total == 400
    assert buffer.truncated


def test_tail_buffer_under_limit_is_exact() -> None:
    """Output under the limit is kept whole and not marked truncated."""
    buffer = TailBuffer(1024)
    buffer.write(b"hello\n")
    assert buffer.text() == "hello\n"
    assert not buffer.truncated


def test_one_chunk_larger_than_the_limit_keeps_its_tail() -> None:
    """A single chunk bigger than the cap never grows the buffer past the cap."""
    buffer = TailBuffer(8)
    buffer.write(b"x" * 1000 + b"END")
    assert buffer.text().endswith("END")
    assert len(buffer.text()) == 8


def test_tail_cut_inside_a_character_and_invalid_utf8_decode() -> None:
    """A cut multi-byte character or invalid UTF-8 decodes with replacement, never fails."""
    buffer = TailBuffer(5)
    buffer.write("ééé".encode() + b"\xff")
    assert "\ufffd" in buffer.text()


def test_limit_must_be_positive() -> None:
    """A zero cap is refused."""
    with pytest.raises(ValueError):
        TailBuffer(0)


def test_collector_separates_streams_and_closes_the_stream() -> None:
    """stdout and stderr frames land in their own buffers; the stream is closed at the end."""
    stream = FakeStream([(b"out1\n", None), (None, b"err\n"), (b"out2\n", None)])
    collector = OutputCollector(stream, limit=1024)
    collector.start()
    captured = collector.finish(timeout=5)
    assert captured.stdout == "out1\nout2\n"
    assert captured.stderr == "err\n"
    assert stream.closed


def test_collector_reports_a_broken_stream_in_stderr() -> None:
    """When reading output fails, stderr says so instead of losing it silently."""

    class Broken(FakeStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield (b"partial\n", None)
            raise OSError("connection reset")

    collector = OutputCollector(Broken([]), limit=1024)
    collector.start()
    captured = collector.finish(timeout=5)
    assert captured.stdout == "partial\n"
    assert "output capture stopped early" in captured.stderr
    assert "connection reset" in captured.stderr


def test_exit_marker_is_taken_only_as_the_last_whole_line() -> None:
    """The wrapper's exit line is removed from the tail; a forged one mid-stream is not."""
    buffer = TailBuffer(1024)
    buffer.write(b"err\n" + EXIT_MARKER + b"0\nmore\n")
    assert not buffer.take_exit_marker()
    buffer.write(EXIT_MARKER + b"137\n")
    assert buffer.take_exit_marker()
    assert buffer.text() == "err\n" + EXIT_MARKER.decode() + "0\nmore\n"
    assert buffer.total == len(buffer.text())


class _Endless(FakeStream):
    """A stream that never ends by itself (a container still stopping)."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from self.frames
        while not self.closed:
            time.sleep(0.01)


@pytest.mark.parametrize("stderr_first", [False, True])
def test_a_run_is_complete_with_both_end_records_whatever_came_first(stderr_first: bool) -> None:
    """stdout's end record and stderr's exit record, in either order (the engine copies the
    streams apart), complete the run before its stream ends; both come off the output."""
    frames: list[tuple[bytes | None, bytes | None]] = [
        (b"partial", None),
        (END_MARKER, None),
        (None, b"warn\n" + EXIT_MARKER + b"3\n"),
    ]
    if stderr_first:
        frames = [frames[0], frames[2], frames[1]]
    lines: list[tuple[str, str]] = []
    collector = OutputCollector(_Endless(frames), 1000, lambda *line: lines.append(line))
    collector.start()
    assert collector.settled.wait(5)
    assert collector.completed == 3
    output = collector.finish(0.0)
    assert (output.stdout, output.stderr, output.exit_reported) == ("partial", "warn\n", True)
    assert sorted(lines) == [("stderr", "warn"), ("stdout", "partial")]


def test_an_end_record_printed_earlier_is_the_scripts_output() -> None:
    """Only records at the very end count: a script that prints them mid-way is not over."""
    frames: list[tuple[bytes | None, bytes | None]] = [
        (END_MARKER + b"more\n", None),
        (None, EXIT_MARKER + b"0\n" + b"later\n"),
    ]
    collector = OutputCollector(FakeStream(frames), 1000)
    collector.start()
    output = collector.finish(5)
    assert collector.completed is None
    assert output.stdout == END_MARKER.decode() + "more\n"
    assert not output.exit_reported


def test_the_end_record_comes_off_the_outputs_stream() -> None:
    """With outputs on, the end record follows the tar stream: taken off before extraction."""
    sink = ArtifactSink(10_000)
    frames: list[tuple[bytes | None, bytes | None]] = [
        (b"out\n" + ARTIFACTS_MARKER + b"TAR" + END_MARKER, None),
        (None, EXIT_MARKER + b"0\n"),
    ]
    collector = OutputCollector(_Endless(frames), 1000, artifacts=sink)
    collector.start()
    assert collector.settled.wait(5) and collector.completed == 0
    output = collector.finish(0.0)
    assert output.stdout == "out\n"
    assert sink.stream().read(100) == b"TAR" and sink.received == 3
    sink.close()
