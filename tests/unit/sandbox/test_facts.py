"""The machine facts the sandbox reports: asked on this host, parsed as untrusted text."""

import os
import subprocess
import sys
from collections.abc import Iterator

from runner.sandbox import facts
from runner.sandbox.engine import OutputStream
from runner.sandbox.streams import CapturedOutput, OutputCollector

Frame = tuple[bytes | None, bytes | None]


class Frames:
    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def close(self) -> None:
        pass


def collect(frames: list[Frame], *, expect: bool) -> CapturedOutput:
    stream: OutputStream = Frames(frames)
    collector = OutputCollector(stream, 1024, facts=expect)
    collector.start()
    return collector.finish(5)


def test_the_cold_probe_reports_this_machine_without_site_packages() -> None:
    """`python -I -S -c COLD` prints one facts line: kernel, CPU, CPUs it may use."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", facts.COLD], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found = facts.parse(done.stdout.rstrip(b"\n"))
    assert found is not None and found.method == "ctypes"
    assert found.kernel == os.uname().release
    assert found.cpus == len(os.sched_getaffinity(0))


def test_garbage_is_no_facts() -> None:
    """Lines that are not a facts record, or hold bad JSON, give None, never raise."""
    for line in (b"hello", facts.MARKER + b"{", facts.MARKER + b"[]", facts.MARKER + b"{}",
                 facts.MARKER + b'{"cpus": "many"}', facts.MARKER + b"[" * 100000):  # fmt: skip
        assert facts.parse(line) is None


def test_the_first_stderr_line_of_a_cold_run_is_taken_off() -> None:
    """The facts line (split across frames) is not in stderr; what follows is."""
    line = facts.MARKER + b'{"kernel": "k", "cpus": 2}\n'
    output = collect([(None, line[:10]), (None, line[10:] + b"oops\n"), (b"out\n", None)],
                     expect=True)  # fmt: skip
    assert output.facts is not None and output.facts.kernel == "k"
    assert output.stderr == "oops\n" and output.stdout == "out\n"


def test_a_facts_line_the_script_prints_is_only_output() -> None:
    """Where no facts are expected first (warm), or after the first line, it stays stderr."""
    line = facts.MARKER + b'{"kernel": "forged"}\n'
    warm = collect([(None, line)], expect=False)
    assert warm.facts is None and "forged" in warm.stderr
    later = collect([(None, facts.EMPTY + line)], expect=True)
    assert later.facts is None and "forged" in later.stderr


def test_stderr_without_a_facts_line_is_kept_whole() -> None:
    """A cold run whose probe printed nothing loses none of its stderr."""
    output = collect([(None, b"no newline at all")], expect=True)
    assert output.facts is None and output.stderr == "no newline at all"
