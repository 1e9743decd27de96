"""Collecting a container's output without ever holding all of it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from runner.core.provenance import SandboxFacts
from runner.sandbox import facts as sandbox_facts
from runner.sandbox.artifacts import ARTIFACTS_MARKER, ArtifactSink
from runner.sandbox.engine import OutputStream
from runner.sandbox.policy import END_MARKER, EXIT_MARKER

#: Receives ("stdout" or "stderr", one line without its newline) as the script prints.
OutputCallback = Callable[[str, str], None]
#: A line longer than this is handed to the callback in pieces of this size.
MAX_LINE = 64 * 1024


class TailBuffer:
    """Keeps the last ``limit`` bytes written to it, and counts all of them.

    ``slack`` more bytes are held back so that a trailer (the sandbox's exit
    record) can be taken off the end and still leave ``limit`` bytes of output.
    """

    def __init__(self, limit: int, slack: int = 0) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.total = 0
        self._keep = limit + slack
        self._data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if len(chunk) >= self._keep:
            self._data[:] = chunk[-self._keep :]
            return
        self._data += chunk
        excess = len(self._data) - self._keep
        if excess > 0:
            del self._data[:excess]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def endswith(self, suffix: bytes) -> bool:
        return self._data.endswith(suffix)

    def exit_status(self) -> int | None:
        """The status of a final ``EXIT_MARKER`` record, if the output ends with one.

        Only the very end counts: the record follows whatever the script wrote
        last, newline or not, and one the script printed earlier stays output.
        """
        start = self._data.rfind(EXIT_MARKER)
        if start < 0 or not self._data.endswith(b"\n"):
            return None
        digits = self._data[start + len(EXIT_MARKER) : -1]
        return int(digits) if digits.isdigit() and len(digits) <= 3 else None

    def take_exit_marker(self) -> bool:
        """Take a final ``EXIT_MARKER`` record off the end; True if the output ended with one."""
        if self.exit_status() is None:
            return False
        return self.take_trailer(bytes(self._data[self._data.rfind(EXIT_MARKER) :]))

    def take_trailer(self, trailer: bytes) -> bool:
        """Take ``trailer`` off the very end; True if the output ended with it."""
        if not self._data.endswith(trailer):
            return False
        self.total -= len(trailer)
        del self._data[len(self._data) - len(trailer) :]
        return True

    def text(self) -> str:
        # A cut tail can start inside a multi-byte character; never fail on it.
        return self._data[-self.limit :].decode("utf-8", errors="replace")


#: Room for the sandbox's exit record behind a full stderr tail.
EXIT_RECORD_SLACK = len(EXIT_MARKER) + 16
#: Records the sandbox's wrapper writes: never handed to an output callback as lines.
RECORDS = (EXIT_MARKER, END_MARKER.rstrip(b"\n"))


class LineSplitter:
    """Cuts a byte stream into lines for a callback, holding at most ``MAX_LINE`` bytes."""

    def __init__(self, name: str, callback: OutputCallback) -> None:
        self._name = name
        self._callback: OutputCallback | None = callback
        self._partial = bytearray()
        self.callback_error: Exception | None = None

    def feed(self, chunk: bytes) -> None:
        self._partial += chunk
        while True:
            newline = self._partial.find(b"\n")
            if newline < 0:
                break
            self._emit(bytes(self._partial[:newline]))
            del self._partial[: newline + 1]
        while len(self._partial) >= MAX_LINE:
            self._emit(bytes(self._partial[:MAX_LINE]))
            del self._partial[:MAX_LINE]

    def flush(self) -> None:
        if self._partial:
            self._emit(bytes(self._partial))
            self._partial.clear()

    def _emit(self, line: bytes) -> None:
        for record in RECORDS:  # a record follows the script's last bytes, newline or not
            at = line.find(record)
            if at >= 0:
                line = line[:at]
                if not line:
                    return
        if self._callback is None:
            return
        try:
            self._callback(self._name, line.decode("utf-8", errors="replace"))
        except Exception as e:  # noqa: BLE001 - a broken callback must not stall the capture
            self.callback_error = e
            self._callback = None


@dataclass
class CapturedOutput:
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    #: The sandbox's wrapper recorded the script's exit (see ``self_limited``).
    exit_reported: bool = True
    #: What the sandbox said of its machine before the script started (cold runs).
    facts: SandboxFacts | None = None


class OutputCollector:
    """Drains a container's demultiplexed output on a thread into two tail buffers."""

    def __init__(
        self,
        stream: OutputStream,
        limit: int,
        on_output: OutputCallback | None = None,
        *,
        artifacts: ArtifactSink | None = None,
        facts: bool = False,
    ) -> None:
        self._stream = stream
        #: With ``facts``, stderr's first line is the sandbox's facts record
        #: (``runner.sandbox.facts``), held here until it is complete.
        self._facts_head: bytearray | None = bytearray() if facts else None
        self._facts_line: bytes | None = None
        #: Set once the output has ended, or once ``completed``.
        self.settled = threading.Event()
        #: The script's exit status once the sandbox has recorded it at the end of stderr
        #: and ended stdout (after the outputs, with outputs on) with ``END_MARKER``: all
        #: the script wrote is in, though its container may still be stopping.
        self.completed: int | None = None
        #: With outputs on, stdout after ``ARTIFACTS_MARKER`` goes here, not to the tail.
        self._artifacts = artifacts
        self._held = b""
        self.stdout = TailBuffer(limit, slack=len(END_MARKER))
        self.stderr = TailBuffer(limit, slack=EXIT_RECORD_SLACK)
        self._lines = (
            (LineSplitter("stdout", on_output), LineSplitter("stderr", on_output))
            if on_output is not None
            else None
        )
        self.error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._drain, name="runner-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _drain(self) -> None:
        try:
            for out, err in self._stream:
                if out:
                    self._stdout(out)
                if err:
                    self._stderr(err)
                if self.completed is None and self._complete():
                    self.completed = self.stderr.exit_status()
                    self.settled.set()
            if self._facts_head is not None:
                head, self._facts_head = bytes(self._facts_head), None
                self._script_stderr(head)
            if self._held:
                self._script_stdout(self._held)
            if self._lines:
                for splitter in self._lines:
                    splitter.flush()
        except Exception as e:  # noqa: BLE001 - reported with the result, never lost silently
            if not self._closing:
                self.error = e
        finally:
            self.settled.set()

    def _complete(self) -> bool:
        # Docker copies stdout and stderr apart: either record may come first.
        sink = self._artifacts
        ended = self.stdout.endswith(END_MARKER) or (sink is not None and sink.endswith(END_MARKER))
        return ended and self.stderr.exit_status() is not None

    def _stderr(self, err: bytes) -> None:
        head = self._facts_head
        if head is None:
            self._script_stderr(err)
            return
        head += err
        newline = head.find(b"\n")
        if newline < 0 and len(head) <= sandbox_facts.MAX_LINE:
            return  # the facts line is not complete yet
        self._facts_head = None
        if newline >= 0 and head.startswith(sandbox_facts.MARKER):
            self._facts_line = bytes(head[:newline])
            self._script_stderr(bytes(head[newline + 1 :]))
        else:
            self._script_stderr(bytes(head))

    def _script_stderr(self, err: bytes) -> None:
        if not err:
            return
        self.stderr.write(err)
        if self._lines:
            self._lines[1].feed(err)

    def _stdout(self, out: bytes) -> None:
        sink = self._artifacts
        if sink is None:
            self._script_stdout(out)
        elif sink.started:
            sink.write(out)
        else:
            data = self._held + out
            at = data.find(ARTIFACTS_MARKER)
            if at >= 0:
                self._held = b""
                self._script_stdout(data[:at])
                sink.write(data[at + len(ARTIFACTS_MARKER) :])
                return
            # Hold back an end that may be the start of a marker split across frames.
            keep = next(
                (k for k in range(min(len(ARTIFACTS_MARKER) - 1, len(data)), 0, -1)
                 if ARTIFACTS_MARKER.startswith(data[-k:])),
                0,
            )  # fmt: skip
            self._held = data[len(data) - keep :]
            self._script_stdout(data[: len(data) - keep])

    def _script_stdout(self, out: bytes) -> None:
        if not out:
            return
        self.stdout.write(out)
        if self._lines:
            self._lines[0].feed(out)

    def finish(self, timeout: float) -> CapturedOutput:
        """Wait up to ``timeout`` for the stream to end, then close it."""
        self._thread.join(timeout)
        self._closing = True
        self._stream.close()
        self._thread.join(1.0)
        exit_reported = self.stderr.take_exit_marker()
        if not self.stdout.take_trailer(END_MARKER) and self._artifacts is not None:
            self._artifacts.take_trailer(END_MARKER)
        stderr = self.stderr.text()
        for splitter in self._lines or ():
            if splitter.callback_error is not None:
                stderr += f"\n[runner] on_output callback failed: {splitter.callback_error!r}\n"
        if self.error is not None:
            stderr += f"\n[runner] output capture stopped early: {self.error!r}\n"
        return CapturedOutput(
            stdout=self.stdout.text(),
            stderr=stderr,
            stdout_truncated=self.stdout.truncated,
            stderr_truncated=self.stderr.truncated,
            exit_reported=exit_reported,
            facts=sandbox_facts.parse(self._facts_line) if self._facts_line else None,
        )
