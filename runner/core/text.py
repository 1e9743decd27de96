"""Text that a script (or anything else untrusted) controls, made safe to show."""

from __future__ import annotations


def printable(text: str, limit: int = 500) -> str:
    """Script-controlled text made safe for a terminal or a log: escapes and length bounded."""
    # Python's own escapes (\x9b, \u202e, \U000e0001) name the character unambiguously.
    escaped = (
        c if c.isprintable() else c.encode("unicode_escape").decode() for c in text[: limit * 2]
    )
    cleaned = "".join(escaped)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."
