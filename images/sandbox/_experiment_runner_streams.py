"""Installed in the sandbox image by experiment-runner: complete, immediate output.

Loaded at interpreter start by ``experiment-runner-streams.pth``. Python's text
streams ignore the byte count a short ``write()`` returns when the layer below
is unbuffered (``PYTHONUNBUFFERED``), and gVisor returns short writes on a
container's output pipe, so bytes were lost there. Here stdout and stderr write
through a buffered layer, which retries until every byte is written, and flush
it on every write: output still arrives as it is printed and survives a kill.
"""

import io
import sys


class _FlushingWriter(io.BufferedWriter):
    """A buffered writer (which completes short writes) that never holds data back."""

    def write(self, data):
        written = super().write(data)
        self.flush()
        return written


def _complete(stream, name):
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream  # no file descriptor (closed or replaced): leave it as it is
    raw = io.FileIO(fd, "wb", closefd=False)
    raw.name = name
    return io.TextIOWrapper(
        _FlushingWriter(raw),
        encoding=stream.encoding,
        errors=stream.errors,
        newline="\n",
        line_buffering=True,
        write_through=True,
    )


sys.stdout = sys.__stdout__ = _complete(sys.stdout, "<stdout>")
sys.stderr = sys.__stderr__ = _complete(sys.stderr, "<stderr>")
