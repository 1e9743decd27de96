"""What ran, kept: script directories stored content-addressed beside the history.

A directory is read with the safe tree walk (``runner.sandbox.files.tree``: no
symlink followed, no device, FIFO or socket opened, bounded) into a manifest,
one entry a path: a directory and its mode, a file's mode, size and SHA-256, or
a symlink's target text (never its target). The manifest's SHA-256 is the
directory's *tree digest*. With a store, each file's content goes to
``blobs/<sha256>`` and the manifest to ``trees/<tree digest>.json``, written to
new names and renamed into place; identical files and directories are stored
once. A directory over the store's bound (``RUNNER_STORE_MAX_BYTES``) is not
stored: its result keeps the digests only.

``restore`` writes a stored directory into a new, empty one, checking every
file against its digest as it goes: a store someone edited is refused, not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from runner.core.exceptions import ExperimentExecutionError
from runner.sandbox.files.tree import Budget, TreeExpired, TreeRefused, read_chunks, walk

#: A tree digest names this manifest format, so another format never matches it.
MANIFEST_FORMAT = "experiment-runner-tree/1"
#: What a directory's digest may read at most (a data directory can be large).
DIGEST_BUDGET_BYTES = 1024 * 1024 * 1024
DIGEST_BUDGET_ENTRIES = 10_000


class StoreError(ExperimentExecutionError):
    """The store does not hold what was asked, or holds something else."""


@dataclass(frozen=True)
class Tree:
    """A directory read into a manifest: its digest, bytes of file content, entries."""

    digest: str
    size: int
    entries: tuple[dict[str, Any], ...]
    #: Contents of the files read while digesting (kept only when the store may keep them).
    contents: dict[str, bytes]


def file_sha256(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a regular file, opened without following a final symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TreeRefused(f"{path} is not a regular file")
        digest = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, 1024 * 1024):
            size += len(chunk)
            digest.update(chunk)
        return size, digest.hexdigest()
    finally:
        os.close(fd)


def read_tree(directory: Path, *, keep_up_to: int = 0) -> Tree:
    """``directory``'s manifest and tree digest; file contents kept while within
    ``keep_up_to`` bytes in all (0: none). Raises ``TreeRefused`` past the digest's
    budget or at a special file."""
    budget = Budget(entries=DIGEST_BUDGET_ENTRIES, bytes=DIGEST_BUDGET_BYTES)
    entries: list[dict[str, Any]] = []
    contents: dict[str, bytes] = {}
    size = 0
    keeping = keep_up_to > 0
    for entry in walk(directory, budget):
        mode = stat.S_IMODE(entry.stat.st_mode)
        path = str(entry.path)
        if entry.kind == "dir":
            entries.append({"path": path, "kind": "dir", "mode": mode})
        elif entry.kind == "symlink":
            entries.append({"path": path, "kind": "symlink", "target": entry.link_target()})
        else:
            fd = entry.open()
            try:
                digest = hashlib.sha256()
                parts: list[bytes] = []
                count = 0
                for chunk in read_chunks(fd, budget):
                    digest.update(chunk)
                    count += len(chunk)
                    if keeping:
                        parts.append(chunk)
                        keeping = size + count <= keep_up_to
                        if not keeping:
                            parts.clear()
                            contents.clear()
            finally:
                os.close(fd)
            size += count
            sha = digest.hexdigest()
            if keeping:
                contents[sha] = b"".join(parts)
            entries.append(
                {"path": path, "kind": "file", "mode": mode, "size": count, "sha256": sha}
            )
    return Tree(_digest(entries), size, tuple(entries), contents if keeping else {})


def _digest(entries: list[dict[str, Any]]) -> str:
    canonical = json.dumps(
        {"format": MANIFEST_FORMAT, "entries": entries}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def store_dir_for(history: Path) -> Path:
    """Where the store of the history ``history`` lives: beside it (``results.jsonl``:
    ``results.store``)."""
    return history.with_name(history.stem + ".store")


class ScriptStore:
    """Script directories by tree digest, and their files by SHA-256."""

    def __init__(self, root: Path | str, max_bytes: int) -> None:
        self.root = Path(root)
        #: Bytes of file content one directory may have and still be stored.
        self.max_bytes = max_bytes

    def keep(self, directory: Path) -> tuple[str, bool]:
        """Digest ``directory`` and store it if within the bound; (tree digest, stored)."""
        tree = read_tree(directory, keep_up_to=self.max_bytes)
        files = [e for e in tree.entries if e["kind"] == "file"]
        if tree.size > self.max_bytes or len(tree.contents) < len({e["sha256"] for e in files}):
            return tree.digest, False
        try:
            for sha, data in tree.contents.items():
                self._write(self.root / "blobs" / sha, data)
            manifest = {"format": MANIFEST_FORMAT, "entries": list(tree.entries)}
            self._write(
                self.root / "trees" / f"{tree.digest}.json",
                json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
            )
        except OSError as e:
            raise ExperimentExecutionError(
                f"Could not keep the script's directory in {self.root}: {e}",
                hint="check that the directory beside the results file is writable, or set "
                "RUNNER_STORE_MAX_BYTES=0 to keep digests only.",
            ) from e
        return tree.digest, True

    def has(self, digest: str) -> bool:
        return _is_hex(digest) and (self.root / "trees" / f"{digest}.json").is_file()

    def _write(self, path: Path, data: bytes) -> None:
        if path.exists():
            return  # content-addressed: what is there is the same
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".new-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            Path(tmp).chmod(0o444)
            Path(tmp).replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise

    def restore(self, digest: str, into: Path) -> None:
        """Write the stored directory ``digest`` into the empty directory ``into``.

        The manifest must hash to ``digest``, each path must be relative and plain,
        and each file's content must hash to its entry: anything else raises
        ``StoreError``. Symlinks are made with their target text, never followed.
        """
        if not self.has(digest):
            raise StoreError(
                f"The store {self.root} does not hold the script directory {digest[:16]}.",
                hint="it was over the store's bound (RUNNER_STORE_MAX_BYTES) when it ran, or "
                "the store was moved; a replay needs the script's directory.",
            )
        raw = (self.root / "trees" / f"{digest}.json").read_bytes()
        try:
            manifest = json.loads(raw)
            entries = manifest["entries"]
            if manifest.get("format") != MANIFEST_FORMAT or _digest(entries) != digest:
                raise ValueError("the manifest does not match its name")
            for entry in entries:
                self._restore_entry(entry, into)
            # Directories get their modes last: a read-only one would refuse its files.
            for entry in reversed(entries):
                made = into.joinpath(*PurePosixPath(str(entry["path"])).parts)
                if entry["kind"] == "dir" and not made.is_symlink():
                    made.chmod((int(entry["mode"]) & 0o755) | 0o555)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise StoreError(
                f"The stored script directory {digest[:16]} in {self.root} is damaged: {e}",
                hint="the store was changed after the run; it cannot be replayed from it.",
            ) from e

    def _restore_entry(self, entry: dict[str, Any], into: Path) -> None:
        relative = PurePosixPath(str(entry["path"]))
        if relative.is_absolute() or any(part in ("", ".", "..") for part in relative.parts):
            raise ValueError(f"a path that leaves the directory: {entry['path']!r}")
        target = into.joinpath(*relative.parts)
        # Parents come first in the manifest; none of them may be a symlink here.
        if any(p.is_symlink() for p in [target, *target.parents] if into in p.parents):
            raise ValueError(f"{entry['path']!r} lies below a symlink")
        kind = entry["kind"]
        if kind == "dir":
            target.mkdir(mode=0o755)
            target.chmod(0o755)
        elif kind == "symlink":
            target.symlink_to(str(entry["target"]))
        elif kind == "file":
            sha = str(entry["sha256"])
            if not _is_hex(sha):
                raise ValueError(f"a bad digest for {entry['path']!r}")
            data = (self.root / "blobs" / sha).read_bytes()
            if hashlib.sha256(data).hexdigest() != sha:
                raise ValueError(f"{entry['path']!r} does not match its digest")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            target.chmod((int(entry["mode"]) & 0o755) | 0o444)
        else:
            raise ValueError(f"an entry of unknown kind {kind!r}")


def _is_hex(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


__all__ = [
    "ScriptStore",
    "StoreError",
    "Tree",
    "TreeExpired",
    "file_sha256",
    "read_tree",
    "store_dir_for",
]
