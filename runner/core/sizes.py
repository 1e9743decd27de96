"""Sizes as Docker writes them (``512m``, ``2g``), read into bytes."""

from __future__ import annotations

import re

#: A size: digits and an optional unit (b, k, m, g; binary, as Docker reads them).
SIZE = re.compile(r"^\d+[bkmg]?$", re.IGNORECASE)


def parse_size(size: str) -> int:
    """Bytes in a Docker size such as ``512m`` or ``2g`` (binary units, as Docker reads them)."""
    if not SIZE.match(size):
        raise ValueError(f"not a size: {size!r}")
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    unit = size[-1].lower()
    return int(size[:-1]) * units[unit] if unit in units else int(size)
