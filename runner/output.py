"""Collecting a container's output without ever holding all of it."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from runner.engine import OutputStream


class TailBuffer:
    """Keeps the last ``limit`` bytes written to it, and counts all of them."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.total = 0
        self._data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if len(chunk) >= self.limit:
            self._data[:] = chunk[-self.limit :]
            return
        self._data += chunk
        excess = len(self._data) - self.limit
        if excess > 0:
            del self._data[:excess]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        # A cut tail can start inside a multi-byte character; never fail on it.
        return self._data.decode("utf-8", errors="replace")


@dataclass
class CapturedOutput:
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool


class OutputCollector:
    """Drains a container's demultiplexed output on a thread into two tail buffers."""

    def __init__(self, stream: OutputStream, limit: int) -> None:
        self._stream = stream
        self.stdout = TailBuffer(limit)
        self.stderr = TailBuffer(limit)
        self.error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._drain, name="runner-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _drain(self) -> None:
        try:
            for out, err in self._stream:
                if out:
                    self.stdout.write(out)
                if err:
                    self.stderr.write(err)
        except Exception as e:  # noqa: BLE001 - reported with the result, never lost silently
            if not self._closing:
                self.error = e

    def finish(self, timeout: float) -> CapturedOutput:
        """Wait up to ``timeout`` for the stream to end, then close it."""
        self._thread.join(timeout)
        self._closing = True
        self._stream.close()
        self._thread.join(1.0)
        stderr = self.stderr.text()
        if self.error is not None:
            stderr += f"\n[runner] output capture stopped early: {self.error!r}\n"
        return CapturedOutput(
            stdout=self.stdout.text(),
            stderr=stderr,
            stdout_truncated=self.stdout.truncated,
            stderr_truncated=self.stderr.truncated,
        )
