"""The script store: directories by tree digest, read without following links, bounded."""

import os
from pathlib import Path

import pytest

from runner.results.store import ScriptStore, StoreError, read_tree, store_dir_for


def tree(tmp_path: Path) -> Path:
    directory = tmp_path / "exp"
    (directory / "sub").mkdir(parents=True)
    (directory / "exp.py").write_text("print(1)\n")
    (directory / "sub" / "helper.py").write_text("X = 1\n")
    (directory / "sub" / "same.py").write_text("X = 1\n")
    return directory


def test_the_store_sits_beside_the_history() -> None:
    """results.jsonl keeps its scripts in results.store next to it."""
    assert store_dir_for(Path("/r/results.jsonl")) == Path("/r/results.store")


def test_a_directory_is_stored_once_and_restored_exactly(tmp_path: Path) -> None:
    """keep() names it by tree digest; restore() gives the same tree (same digest)."""
    directory = tree(tmp_path)
    (directory / "link").symlink_to("/etc/passwd")
    store = ScriptStore(tmp_path / "store", 1024 * 1024)
    digest, stored = store.keep(directory)
    assert stored and store.has(digest)
    assert store.keep(directory) == (digest, True)  # identical: stored once
    assert len(list((tmp_path / "store" / "blobs").iterdir())) == 2  # two distinct contents
    into = tmp_path / "restored"
    into.mkdir()
    store.restore(digest, into)
    assert (into / "sub" / "helper.py").read_text() == "X = 1\n"
    # The link is recreated as a link, with its target text: never followed.
    assert str((into / "link").readlink()) == "/etc/passwd"
    assert read_tree(into).digest == digest


def test_a_read_only_directory_is_restored_with_its_files(tmp_path: Path) -> None:
    """A 0555 directory gets its mode after its files are in (else they could not be)."""
    directory = tree(tmp_path)
    (directory / "sub").chmod(0o555)
    store = ScriptStore(tmp_path / "store", 1024 * 1024)
    digest, _ = store.keep(directory)
    into = tmp_path / "restored"
    into.mkdir()
    store.restore(digest, into)
    assert (into / "sub" / "same.py").read_text() == "X = 1\n"
    assert read_tree(into).digest == digest
    for where in (directory, into):
        (where / "sub").chmod(0o755)


def test_a_change_anywhere_changes_the_digest(tmp_path: Path) -> None:
    """One byte, a name or a link target changed: another tree digest."""
    directory = tree(tmp_path)
    before = read_tree(directory).digest
    (directory / "sub" / "helper.py").write_text("X = 2\n")
    assert read_tree(directory).digest != before


def test_a_directory_over_the_bound_keeps_digests_only(tmp_path: Path) -> None:
    """Above max_bytes nothing is written: the digest alone is recorded."""
    directory = tree(tmp_path)
    (directory / "big.bin").write_bytes(b"x" * 5000)
    store = ScriptStore(tmp_path / "store", 1000)
    digest, stored = store.keep(directory)
    assert not stored and digest == read_tree(directory).digest
    assert not (tmp_path / "store").exists()


def test_a_fifo_is_never_opened(tmp_path: Path) -> None:
    """A special file in the directory refuses the walk (it could block or be a device)."""
    directory = tree(tmp_path)
    os.mkfifo(directory / "pipe")
    with pytest.raises(Exception, match="device, FIFO or socket"):
        ScriptStore(tmp_path / "store", 1024).keep(directory)


def test_an_edited_store_is_refused(tmp_path: Path) -> None:
    """A blob changed after the run: restore says the store is damaged, writes nothing more."""
    directory = tree(tmp_path)
    store = ScriptStore(tmp_path / "store", 1024 * 1024)
    digest, _ = store.keep(directory)
    blob = next((tmp_path / "store" / "blobs").iterdir())
    blob.chmod(0o644)
    blob.write_text("import os; os.system('rm -rf /')\n")
    into = tmp_path / "restored"
    into.mkdir()
    with pytest.raises(StoreError, match="damaged"):
        store.restore(digest, into)


def test_a_manifest_cannot_write_outside_the_directory(tmp_path: Path) -> None:
    """A manifest entry with .. or an absolute path is refused (the manifest is checked)."""
    store = ScriptStore(tmp_path / "store", 1024)
    for bad in ("../escape", "/abs", "a/../../b"):
        with pytest.raises(ValueError, match="leaves the directory"):
            store._restore_entry({"path": bad, "kind": "dir", "mode": 0o755}, tmp_path)


def test_a_missing_tree_says_why(tmp_path: Path) -> None:
    """Restoring what was never stored is a StoreError with a hint."""
    with pytest.raises(StoreError, match="does not hold"):
        ScriptStore(tmp_path / "store", 1024).restore("0" * 64, tmp_path)
