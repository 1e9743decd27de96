import pytest

from runner.sandbox.policy import EXIT_MARKER
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
