"""Image layers and archives written byte for byte the same from the same files.

A layer is a tar whose bytes depend on the files alone: names sorted, every
mtime clamped to the lock's ``SOURCE_DATE_EPOCH``, numeric owners and no owner
names, no extended attributes, hard links pointing to the first name in sorted
order, no setuid or setgid bit, nothing from ``/dev``, ``/proc`` or ``/sys``.
The image's config has a fixed creation time and sorted keys, and the engine is
handed an image archive (``docker save``'s format), so the image ID, the SHA-256
of that config, is the same on every engine that loads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

#: Parts of a root file system that never go into a layer: the engine provides
#: them, or they hold what one machine or one run left (logs, caches, indexes).
DROPPED_TREES = (
    "dev", "proc", "sys", "run", "tmp", "var/tmp", "var/log", "var/cache/apt",
    "var/cache/debconf", "var/cache/ldconfig", "var/lib/apt/lists",
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
)  # fmt: skip
#: Files the engine mounts over, or that name the machine that built the tree.
DROPPED_FILES = ("etc/hostname", "etc/resolv.conf", "etc/hosts", "etc/mtab")

Rewrite = Callable[[str, bytes], bytes]


@dataclass(frozen=True)
class Layer:
    path: Path
    #: ``sha256:`` of the uncompressed tar: the config's ``rootfs.diff_ids`` entry.
    diff_id: str


def _keep(name: str, dropped_trees: Sequence[str]) -> bool:
    """Keep the tree's top directories themselves (``tmp``, ``var/log``), not their contents."""
    if name in DROPPED_FILES:
        return False
    return not any(name.startswith(tree + "/") for tree in dropped_trees)


def normalize_tar(
    source: Path,
    dest: Path,
    *,
    epoch: int,
    prefix: tuple[str, str] = ("", ""),
    dropped_trees: Sequence[str] = DROPPED_TREES,
    rewrite: Mapping[str, Rewrite] | None = None,
    extra: Mapping[str, tuple[bytes, int]] | None = None,
    parents: Sequence[str] = (),
) -> Layer:
    """Write ``source``'s files as a reproducible layer tar at ``dest``.

    ``prefix`` (old, new) renames the members' leading path; ``rewrite`` maps a
    member name to a function of its content; ``extra`` adds regular files
    (name: content, mode); ``parents`` are directories written first (mode 0755).
    """
    rewrite = rewrite or {}
    extra = dict(extra or {})
    old, new = prefix
    with tarfile.open(source, "r:") as src:
        members: dict[str, tarfile.TarInfo] = {}
        for member in src.getmembers():
            name = member.name.removeprefix("./").rstrip("/")
            if old:
                if name != old and not name.startswith(old + "/"):
                    continue
                name = new + name[len(old) :]
            if not name or name == "." or not _keep(name, dropped_trees):
                continue
            if member.ischr() or member.isblk() or member.isfifo():
                continue
            members[name] = member
        # A hard link's group is written once, under its first name in sorted order.
        groups: dict[str, list[str]] = {}
        for name, member in members.items():
            if member.islnk():
                target = member.linkname.removeprefix("./")
                if old:
                    target = new + target[len(old) :]
                groups.setdefault(target, [target]).append(name)
        first = {
            n: min(k for k in group if k in members)
            for group in groups.values()
            for n in group
            if n in members
        }
        with (
            dest.open("wb") as out,
            tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tar,
        ):
            if True:
                written = set()
                for directory in parents:
                    if directory not in members:
                        tar.addfile(_info(directory, tarfile.DIRTYPE, 0o755, epoch))
                        written.add(directory)
                names = sorted(set(members) | set(extra))
                for name in names:
                    if name in extra:
                        content, mode = extra[name]
                        info = _info(name, tarfile.REGTYPE, mode, epoch)
                        info.size = len(content)
                        tar.addfile(info, io.BytesIO(content))
                        continue
                    member = members[name]
                    head = first.get(name, name)
                    if head != name:
                        info = _copy(member, name, epoch)
                        info.type, info.linkname, info.size = tarfile.LNKTYPE, head, 0
                        tar.addfile(info)
                        continue
                    info = _copy(member, name, epoch)
                    if member.isfile() or member.islnk():
                        # A group's first name carries the data (tarfile reads through a link).
                        try:
                            content = _read(src, member)
                        except KeyError:  # a hard link to a file that was dropped
                            continue
                        if name in rewrite:
                            content = rewrite[name](name, content)
                        info.type, info.linkname, info.size = tarfile.REGTYPE, "", len(content)
                        tar.addfile(info, io.BytesIO(content))
                    else:
                        tar.addfile(info)
    return Layer(dest, f"sha256:{file_sha256(dest)}")


def _info(name: str, kind: bytes, mode: int, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _copy(member: tarfile.TarInfo, name: str, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = member.type
    # Defence in depth: no setuid or setgid file in the sandbox at all.
    info.mode = member.mode & ~0o6000
    info.mtime = min(int(member.mtime), epoch)
    info.uid, info.gid = member.uid, member.gid
    info.uname = info.gname = ""
    info.linkname = member.linkname if member.issym() else ""
    info.size = member.size if member.isfile() else 0
    return info


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo | str) -> bytes:
    data = tar.extractfile(member)
    if data is None:
        raise ValueError(f"{member!s} is not a file in {tar.name!r}")
    return data.read()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def timestamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(
    layers: Sequence[Layer],
    *,
    epoch: int,
    env: Sequence[str],
    labels: Mapping[str, str],
    user: str = "",
    workdir: str = "",
    cmd: Sequence[str] = ("python3",),
    history: Sequence[str] = (),
) -> bytes:
    """The image's config JSON, its bytes fixed by its content (sorted keys, no spaces)."""
    created = timestamp(epoch)
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": list(env),
            "Cmd": list(cmd),
            "Labels": dict(labels),
            "User": user,
            "WorkingDir": workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": created, "created_by": step}
            for step in (history or [f"layer {i}" for i in range(len(layers))])
        ],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def image_id(config: bytes) -> str:
    return f"sha256:{hashlib.sha256(config).hexdigest()}"


def write_archive(dest: Path, config: bytes, layers: Sequence[Layer], tag: str) -> str:
    """A ``docker load`` archive of one image; the image ID it loads as."""
    ident = image_id(config)
    config_name = f"{ident[7:]}.json"
    manifest = [
        {
            "Config": config_name,
            "RepoTags": [tag],
            "Layers": [f"{layer.diff_id[7:]}/layer.tar" for layer in layers],
        }
    ]
    with tarfile.open(dest, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, content in (
            (config_name, config),
            ("manifest.json", json.dumps(manifest, sort_keys=True).encode()),
        ):
            info = _info(name, tarfile.REGTYPE, 0o644, 0)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for layer in layers:
            info = _info(f"{layer.diff_id[7:]}/layer.tar", tarfile.REGTYPE, 0o644, 0)
            info.size = layer.path.stat().st_size
            with layer.path.open("rb") as file:
                tar.addfile(info, file)
    return ident


def archive_layers(archive: Path) -> tuple[bytes, list[tuple[str, tarfile.TarInfo]]]:
    """An image archive's config and its layer members (name in the archive, info)."""
    with tarfile.open(archive, "r:") as tar:
        manifest = json.loads(_read(tar, "manifest.json"))[0]
        config = _read(tar, manifest["Config"])
        return config, [(name, tar.getmember(name)) for name in manifest["Layers"]]


def image_entries(archive: Path) -> dict[str, str]:
    """What an image archive holds, keyed for comparing two: the config's fields
    (``config:Labels.NAME``, ``config:created``, ...) and every file of every layer."""
    config, _ = archive_layers(archive)
    entries: dict[str, str] = {}

    def flatten(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                flatten(f"{prefix}.{key}" if prefix else str(key), item)
        elif prefix != "rootfs.diff_ids":  # the layers are compared file by file
            entries[f"config:{prefix}"] = json.dumps(value, sort_keys=True)

    flatten("", json.loads(config))
    return {**entries, **layer_files(archive)}


def layer_files(archive: Path) -> dict[str, str]:
    """Every file of every layer of an image archive: ``layer/path`` -> digest and metadata."""
    files: dict[str, str] = {}
    with tarfile.open(archive, "r:") as outer:
        manifest = json.loads(_read(outer, "manifest.json"))[0]
        for index, name in enumerate(manifest["Layers"]):
            layer = outer.extractfile(name)
            if layer is None:
                raise ValueError(f"{archive} lacks its layer {name}")
            with tarfile.open(fileobj=layer, mode="r|") as inner:
                for member in inner:
                    digest = ""
                    if member.isfile():
                        digest = hashlib.sha256(_read(inner, member)).hexdigest()
                    files[f"{index}:{member.name}"] = (
                        f"{member.type!r} {member.mode:o} {member.uid}:{member.gid} "
                        f"{member.mtime} {member.linkname} {digest}"
                    )
    return files
