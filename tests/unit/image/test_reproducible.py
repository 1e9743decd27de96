"""The reproducible recipe's parts, without an engine: locks, layers, archives, checks."""

import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentDefaults, ExperimentExecutionError
from runner.image import imports as imports_module
from runner.image.debian_lock import (
    DebEntry,
    DebianLock,
    fetch_debs,
    read_debian_lock,
    read_extra_lock,
    resolve_extra,
    write_extra_lock,
)
from runner.image.definition import IMAGE_ID, image_dir, recorded_image_id
from runner.image.imports import check_imports
from runner.image.layers import (
    archive_layers,
    image_config,
    image_id,
    layer_files,
    normalize_tar,
    write_archive,
)
from runner.image.recipe import definition_digest
from runner.image.verify import load_image

EPOCH = 1_700_000_000


def entry(package: str, content: bytes, filename: str | None = None) -> DebEntry:
    return DebEntry(
        package,
        "1.0-1",
        "amd64",
        filename or f"pool/main/{package[0]}/{package}/{package}_1.0-1_amd64.deb",
        hashlib.sha256(content).hexdigest(),
        len(content),
    )


def test_the_shipped_debian_lock_reads_and_pins_every_package() -> None:
    """The shipped Debian lock names python3 and each .deb with a version and a hash."""
    lock = read_debian_lock(image_dir() / "debian.lock")
    assert lock.suite == "bookworm"
    assert {"python3", "python3-venv"} <= set(lock.include)
    names = {e.package for e in lock.entries}
    assert {"python3.11", "libc6", "dpkg", "usr-is-merged"} <= names
    assert "usrmerge" not in names  # it would bring perl into the sandbox
    assert all(len(e.sha256) == 64 and e.filename.startswith("pool/") for e in lock.entries)


def test_the_shipped_lock_records_the_image_id() -> None:
    """image-id holds the sha256 image ID the shipped locks must give."""
    recorded = recorded_image_id(image_dir() / IMAGE_ID)
    assert recorded is not None and recorded.startswith("sha256:")


def test_a_debian_lock_round_trips(tmp_path: Path) -> None:
    """A lock written by the tool reads back entry for entry."""
    lock = DebianLock("bookworm", ("python3",), EPOCH, (entry("libfoo1", b"x"),))
    (tmp_path / "debian.lock").write_text(lock.text())
    assert read_debian_lock(tmp_path / "debian.lock") == lock


@pytest.mark.parametrize(
    "line",
    [
        "libfoo1 1.0 amd64 pool/main/l/libfoo1/libfoo1.deb sha256:abc 12",  # short hash
        "libfoo1 1.0 amd64 /etc/passwd sha256:" + "0" * 64 + " 12",  # not a pool path
        "libfoo1 1.0 amd64 pool/../../x.deb sha256:" + "0" * 64 + " 12",  # climbs out
        "Libfoo 1.0 amd64 pool/main/l/l/l.deb sha256:" + "0" * 64 + " 12",  # not a name
        "libfoo1 1.0 amd64 pool/main/l/l/l.deb sha256:" + "0" * 64,  # no size
    ],
)
def test_a_hand_edited_debian_lock_is_refused(tmp_path: Path, line: str) -> None:
    """A line that is not exactly what the locker writes is refused, naming the re-lock."""
    path = tmp_path / "debian.lock"
    path.write_text("suite: bookworm\ninclude: python3\nsource-date-epoch: 1\n" + line + "\n")
    with pytest.raises(ExperimentExecutionError, match="line 4") as caught:
        read_debian_lock(path)
    assert "runner image lock" in (caught.value.hint or "")


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A Debian mirror on a loopback port: serves the files put in its dict, else 404."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/debian", files
    server.shutdown()


def test_locked_debs_are_downloaded_and_checked(
    tmp_path: Path, mirror: tuple[str, dict[str, bytes]]
) -> None:
    """Each locked file is fetched once, checked by hash, and then served from the cache."""
    url, files = mirror
    pinned = entry("libfoo1", b"the deb")
    files[f"debian/{pinned.filename}"] = b"the deb"
    (path,) = fetch_debs([pinned], url, tmp_path / "cache", log=lambda m: None)
    assert path.read_bytes() == b"the deb"
    files.clear()
    assert fetch_debs([pinned], url, tmp_path / "cache", log=lambda m: None) == [path]


def test_a_version_the_mirror_dropped_names_it_and_the_relock(
    tmp_path: Path, mirror: tuple[str, dict[str, bytes]]
) -> None:
    """A locked file the mirror no longer carries is an error naming it and `runner image lock`."""
    url, _ = mirror
    dropped = r"no longer carries libfoo1 1\.0-1"
    with pytest.raises(ExperimentExecutionError, match=dropped) as caught:
        fetch_debs([entry("libfoo1", b"gone")], url, tmp_path / "cache", log=lambda m: None)
    assert "runner image lock" in (caught.value.hint or "")


def test_a_deb_with_another_hash_is_refused(
    tmp_path: Path, mirror: tuple[str, dict[str, bytes]]
) -> None:
    """A file whose SHA-256 is not the locked one is refused and not kept."""
    url, files = mirror
    pinned = entry("libfoo1", b"the locked deb")
    files[f"debian/{pinned.filename}"] = b"another deb"
    with pytest.raises(ExperimentExecutionError, match="the lock says"):
        fetch_debs([pinned], url, tmp_path / "cache", log=lambda m: None)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("name", ["libgomp1;id", "-oAPT::Get=1", "../x", "LIBGOMP1", "a b"])
def test_debian_names_are_names_only(tmp_path: Path, name: str) -> None:
    """--debian takes package names alone: options, paths and shell are refused before apt."""
    base = DebianLock("bookworm", (), EPOCH, (entry("libc6", b"c"),))
    with pytest.raises(ExperimentExecutionError, match="not a Debian package name"):
        resolve_extra(
            [name], base, "http://127.0.0.1:9/debian", tmp_path, status="", log=lambda m: None
        )


def test_an_extra_debian_lock_round_trips(tmp_path: Path) -> None:
    """A user image's .debian lock reads back its entries; an odd line is refused."""
    path = tmp_path / "requirements.lock.debian"
    entries = [entry("libgomp1", b"gomp")]
    write_extra_lock(path, ["libgomp1"], entries)
    assert read_extra_lock(path) == entries
    path.write_text(path.read_text() + "evil line\n")
    with pytest.raises(ExperimentExecutionError, match="not a Debian lock entry"):
        read_extra_lock(path)


def test_definition_digest_covers_the_debian_lock_and_extras(tmp_path: Path) -> None:
    """Another Debian lock, or other --debian packages, invalidate a previous build."""
    for name in ("debian.lock", "requirements.lock", "_experiment_runner_streams.py",
                 "experiment-runner-streams.pth"):  # fmt: skip
        (tmp_path / name).write_bytes((image_dir() / name).read_bytes())
    before = definition_digest(tmp_path)
    assert definition_digest(tmp_path, extra=["libgomp1 1 amd64 p x 1"]) != before
    (tmp_path / "debian.lock").write_text("changed\n")
    assert definition_digest(tmp_path) != before


def tree_tar(path: Path, *, mtime: int, order: list[str], owner: str) -> Path:
    """A root file system tar: same files, a given order, mtime and owner names."""
    files = {
        "etc/passwd": (b"root:x:0:0::/root:/bin/sh\n", 0o644),
        "usr/bin/su": (b"ELF su", 0o4755),
        "usr/bin/python3": (b"ELF python", 0o755),
        "var/log/dpkg.log": (b"installed at " + str(mtime).encode(), 0o644),
        "etc/hostname": (b"builder-" + owner.encode(), 0o644),
    }
    with tarfile.open(path, "w") as tar:
        for directory in ("etc", "usr", "usr/bin", "var", "var/log"):
            info = tarfile.TarInfo(f"./{directory}")
            info.type, info.mode, info.mtime, info.uname = tarfile.DIRTYPE, 0o755, mtime, owner
            tar.addfile(info)
        for name in order:
            content, mode = files[name]
            info = tarfile.TarInfo(f"./{name}")
            info.size, info.mode, info.mtime, info.uname = len(content), mode, mtime, owner
            tar.addfile(info, io.BytesIO(content))
        if "usr/bin/python3" in order:
            link = tarfile.TarInfo("./usr/bin/python3.11")
            link.type, link.linkname, link.mtime = tarfile.LNKTYPE, "./usr/bin/python3", mtime
            tar.addfile(link)
    return path


def test_layers_depend_on_the_files_alone(tmp_path: Path) -> None:
    """Other file order, later mtimes, owner names and logs give the same layer bytes."""
    order = ["etc/passwd", "usr/bin/su", "usr/bin/python3", "var/log/dpkg.log", "etc/hostname"]
    one = tree_tar(tmp_path / "one.tar", mtime=EPOCH + 5000, order=order, owner="alice")
    two = tree_tar(tmp_path / "two.tar", mtime=EPOCH + 9999, order=order[::-1], owner="bob")
    first = normalize_tar(one, tmp_path / "l1.tar", epoch=EPOCH)
    second = normalize_tar(two, tmp_path / "l2.tar", epoch=EPOCH)
    assert first.diff_id == second.diff_id
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.diff_id == f"sha256:{hashlib.sha256(first.path.read_bytes()).hexdigest()}"


def test_a_layer_is_sorted_clamped_and_without_setuid_or_machine_files(tmp_path: Path) -> None:
    """Names sorted, mtimes clamped, no setuid bit, no hostname or logs, hard links kept."""
    order = ["usr/bin/su", "etc/passwd", "usr/bin/python3", "var/log/dpkg.log", "etc/hostname"]
    layer = normalize_tar(
        tree_tar(tmp_path / "t.tar", mtime=EPOCH + 1, order=order, owner="alice"),
        tmp_path / "layer.tar",
        epoch=EPOCH,
        rewrite={"etc/passwd": lambda _, data: data + b"sandbox:x:10001:10001::/tmp:/x\n"},
    )
    with tarfile.open(layer.path) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert "etc/hostname" not in names and "var/log/dpkg.log" not in names
        assert "var/log" in names  # the directory stays, empty
        assert all(m.mtime == EPOCH and m.uname == "" for m in members)
        assert not any(m.mode & 0o6000 for m in members)
        by_name = {m.name: m for m in members}
        assert by_name["usr/bin/python3"].isfile()
        assert by_name["usr/bin/python3.11"].islnk()
        assert by_name["usr/bin/python3.11"].linkname == "usr/bin/python3"
        passwd = tar.extractfile("etc/passwd")
        assert passwd is not None and passwd.read().endswith(b"sandbox:x:10001:10001::/tmp:/x\n")


def test_an_image_archive_loads_under_its_config_digest(tmp_path: Path) -> None:
    """The archive's config is the image: its SHA-256 is the ID, fixed by content alone."""
    layer = normalize_tar(
        tree_tar(tmp_path / "t.tar", mtime=EPOCH, order=["etc/passwd"], owner="a"),
        tmp_path / "layer.tar",
        epoch=EPOCH,
    )
    kwargs: dict[str, Any] = {
        "epoch": EPOCH,
        "env": ["LANG=C.UTF-8"],
        "labels": {"b": "2", "a": "1"},
    }
    config = image_config([layer], **kwargs)
    assert config == image_config([layer], **{**kwargs, "labels": {"a": "1", "b": "2"}})
    assert json.loads(config)["created"] == "2023-11-14T22:13:20Z"
    ident = write_archive(tmp_path / "image.tar", config, [layer], "trial/x:1")
    assert ident == image_id(config)
    read_config, layers = archive_layers(tmp_path / "image.tar")
    assert read_config == config and len(layers) == 1
    assert "0:etc/passwd" in layer_files(tmp_path / "image.tar")


class LoadingEngine:
    """Records what it was asked to load; holds every image it loaded."""

    def __init__(self) -> None:
        self.loaded: list[Path] = []

    def load_image(self, archive: Path) -> None:
        self.loaded.append(archive)

    def image_exists(self, ref: str) -> bool:
        return bool(self.loaded)


def test_load_checks_the_id_against_the_lock_before_loading(tmp_path: Path) -> None:
    """An archive holding another image than the lock records is refused, never loaded."""
    layer = normalize_tar(
        tree_tar(tmp_path / "t.tar", mtime=EPOCH, order=["etc/passwd"], owner="a"),
        tmp_path / "layer.tar",
        epoch=EPOCH,
    )
    config = image_config([layer], epoch=EPOCH, env=[], labels={})
    write_archive(tmp_path / "image.tar", config, [layer], "trial/x:1")
    engine = LoadingEngine()
    with pytest.raises(ExperimentExecutionError, match="the lock records sha256:0000"):
        load_image(engine, tmp_path / "image.tar", expected_id="sha256:" + "0" * 64)  # type: ignore[arg-type]
    assert engine.loaded == []
    assert load_image(engine, tmp_path / "image.tar", expected_id=image_id(config)) == image_id(  # type: ignore[arg-type]
        config
    )


def test_a_failed_import_names_the_library_and_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import failing for libgomp.so.1 is a build error naming it and Debian's libgomp1."""
    import gzip

    settings = ExperimentDefaults(cache_dir=tmp_path)
    contents = tmp_path / "debian" / "Contents-bookworm-amd64.gz"
    contents.parent.mkdir()
    with gzip.open(contents, "wt") as file:
        file.write("usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0   libs/libgomp1\n")
        file.write("usr/lib/x86_64-linux-gnu/libgomp.so.1       libs/libgomp1\n")
    error = "OSError: libgomp.so.1: cannot open shared object file: No such file or directory"
    monkeypatch.setattr(
        imports_module, "run_listing", lambda engine, image, code: json.dumps({"lightgbm": error})
    )
    with pytest.raises(ExperimentExecutionError, match=r"libgomp\.so\.1") as caught:
        check_imports(None, "trial/lgbm:1", {"lightgbm": "4.6.0"}, settings=settings)  # type: ignore[arg-type]
    assert "--debian libgomp1" in (caught.value.hint or "")


def test_imports_that_work_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """No failed module: the check is silent."""
    monkeypatch.setattr(imports_module, "run_listing", lambda engine, image, code: "{}\n")
    check_imports(None, "trial/x:1", {"tabulate": "0.9.0"}, log=lambda m: None)  # type: ignore[arg-type]


def test_cli_debian_packages_belong_to_a_user_image(capsys: pytest.CaptureFixture[str]) -> None:
    """`runner image build --debian PKG` without a user image's options exits 2 and says so."""
    from runner.cli.main import main

    assert main(["image", "build", "--debian", "libgomp1"]) == 2
    assert "--requirements FILE" in capsys.readouterr().err


def test_a_user_image_with_a_bad_debian_name_fails_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --debian value that is not a package name stops the build before uv or apt starts."""
    from runner.cli.main import main

    lock = tmp_path / "requirements.lock"
    lock.write_text((image_dir() / "requirements.lock").read_text())
    code = main(["image", "build", "--lock", str(lock), "--tag", "trial/x:1",
                 "--debian", "libgomp1;curl"])  # fmt: skip
    assert code == 2
    assert "not a Debian package name" in capsys.readouterr().err
    assert not (tmp_path / "requirements.lock.debian").exists()


def test_lock_makes_both_locks_then_records_the_built_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`runner image lock` runs uv, then mmdebstrap's resolution, then a build, and writes
    the ID that build gave into image-id."""
    from runner.image import build as build_module
    from runner.image.build import BuiltImage, lock_image

    calls: list[str] = []
    monkeypatch.setattr(build_module, "image_dir", lambda: tmp_path)
    monkeypatch.setattr(
        build_module, "compile_lock", lambda requirements, output, **kw: calls.append("uv")
    )
    monkeypatch.setattr(
        build_module,
        "lock_debian",
        lambda suite, mirror, dest, **kw: calls.append(f"debian {suite} {kw['source_date_epoch']}"),
    )

    def build(engine: object, settings: object, **kw: Any) -> BuiltImage:
        calls.append(f"build expected={kw['expected_id']}")
        return BuiltImage("t:1", "sha256:" + "ab" * 32, {}, reused=False)

    monkeypatch.setattr(build_module, "build_image", build)
    settings = ExperimentDefaults(cache_dir=tmp_path / "cache")
    lock_image(None, settings, log=lambda m: None, source_date_epoch=EPOCH)  # type: ignore[arg-type]
    assert calls == ["uv", f"debian bookworm {EPOCH}", "build expected=None"]
    assert recorded_image_id(tmp_path / IMAGE_ID) == "sha256:" + "ab" * 32


def test_two_images_compare_by_config_field_and_file(tmp_path: Path) -> None:
    """Two archives that differ in a label and one file's content name exactly those."""
    from runner.image.layers import image_entries

    order = ["etc/passwd", "usr/bin/python3"]
    one = tree_tar(tmp_path / "one.tar", mtime=EPOCH, order=order, owner="a")
    layer_one = normalize_tar(one, tmp_path / "l1.tar", epoch=EPOCH)
    layer_two = normalize_tar(
        one, tmp_path / "l2.tar", epoch=EPOCH, rewrite={"etc/passwd": lambda _, d: d + b"x\n"}
    )
    archives = []
    for name, layer, title in (("a", layer_one, "one"), ("b", layer_two, "two")):
        config = image_config([layer], epoch=EPOCH, env=[], labels={"title": title})
        write_archive(tmp_path / f"{name}.tar", config, [layer], f"trial/{name}:1")
        archives.append(image_entries(tmp_path / f"{name}.tar"))
    before, after = archives
    differing = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert differing == ["0:etc/passwd", "config:config.Labels.title"]


def test_password_change_days_are_the_locks_not_the_clocks() -> None:
    """/etc/shadow's last-change day becomes the lock's SOURCE_DATE_EPOCH day."""
    from runner.image.recipe import _shadow_dated

    shadow = b"root:*:20791:0:99999:7:::\nsandbox:!::0:99999:7:::\n"
    assert _shadow_dated(shadow, 19000) == b"root:*:19000:0:99999:7:::\nsandbox:!::0:99999:7:::\n"
