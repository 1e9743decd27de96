"""The Debian half of the image's lock: every ``.deb`` by name, version, architecture and hash.

``lock_debian`` resolves the base's packages against the mirror with mmdebstrap
(Debian's own bootstrapper, which uses apt's resolver), reads what it installed
and takes each package's pool path and SHA-256 from the mirror's signed index.
A build then downloads exactly those files (``fetch_debs``), checks each hash,
and bootstraps from a repository made of them alone (``local_repository``): the
mirror's moving state never reaches the image.

``resolve_extra`` does the same for a user image's ``--debian`` packages: apt's
resolver, in a scratch directory, given the base's package list as installed,
says which files are missing. Those are unpacked into a layer of their own with
``dpkg-deb -x`` (``unpack_debs``); no maintainer script runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError

_Log = Callable[[str], None]

DEBIAN_LOCK = "debian.lock"
RELOCK = "runner image lock"
#: What the base holds besides Debian's required set.
BASE_INCLUDE = ("python3", "python3-venv")
#: Merged /usr as debootstrap makes it (directory symlinks, ``usr-is-merged``), not by
#: the ``usrmerge`` package, which would bring all of perl into the sandbox.
MERGED_USR = "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"
#: A Debian package name (Policy 5.6.1) and version (5.6.12).
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_VERSION = re.compile(r"^[0-9A-Za-z.+~:-]+$")
_ARCH = re.compile(r"^[a-z0-9-]+$")
_POOL = re.compile(r"^pool/[A-Za-z0-9+._/~-]+\.deb$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DebEntry:
    """One locked ``.deb``: where it sits in the mirror's pool and what it must hash to."""

    package: str
    version: str
    arch: str
    filename: str
    sha256: str
    size: int

    def line(self) -> str:
        return (
            f"{self.package} {self.version} {self.arch} {self.filename} "
            f"sha256:{self.sha256} {self.size}"
        )


@dataclass(frozen=True)
class DebianLock:
    suite: str
    include: tuple[str, ...]
    #: The time every file of the image is clamped to and the image is dated with.
    source_date_epoch: int
    entries: tuple[DebEntry, ...]

    def text(self) -> str:
        head = [
            f"# The sandbox image's Debian packages, resolved against the mirror by `{RELOCK}`.",
            "# package version architecture pool-path sha256 size; regenerate, never edit.",
            f"suite: {self.suite}",
            f"include: {','.join(self.include)}",
            f"source-date-epoch: {self.source_date_epoch}",
        ]
        return "\n".join([*head, *(entry.line() for entry in self.entries)]) + "\n"

    def versions(self) -> dict[str, str]:
        return {entry.package: entry.version for entry in self.entries}


def valid_package_name(name: str) -> bool:
    return bool(_NAME.match(name)) and len(name) <= 100


def read_debian_lock(path: Path) -> DebianLock:
    """Read a Debian lock, refusing any line that is not exactly what ``lock_debian`` writes."""
    if not path.is_file():
        raise ExperimentExecutionError(
            f"The Debian lock {path} is missing.", hint=f"make it with `{RELOCK}`."
        )
    header: dict[str, str] = {}
    entries: list[DebEntry] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(": ")
        if sep and key in ("suite", "include", "source-date-epoch") and not entries:
            header[key] = value
            continue
        fields = line.split(" ")
        entry = _entry(fields) if len(fields) == 6 else None
        if entry is None:
            raise ExperimentExecutionError(
                f"{path}, line {number}: not a Debian lock entry: {line[:200]!r}",
                hint=f"regenerate the lock with `{RELOCK}`; it is never written by hand.",
            )
        entries.append(entry)
    if set(header) != {"suite", "include", "source-date-epoch"} or not entries:
        raise ExperimentExecutionError(
            f"{path} is not a complete Debian lock (suite, include, source-date-epoch, entries).",
            hint=f"regenerate it with `{RELOCK}`.",
        )
    include = tuple(header["include"].split(",")) if header["include"] else ()
    if not _NAME.match(header["suite"]) or not all(valid_package_name(n) for n in include):
        raise ExperimentExecutionError(f"{path}: bad suite or include line.", hint=RELOCK)
    return DebianLock(header["suite"], include, int(header["source-date-epoch"]), tuple(entries))


def _entry(fields: list[str]) -> DebEntry | None:
    package, version, arch, filename, digest, size = fields
    if not (
        valid_package_name(package)
        and _VERSION.match(version)
        and _ARCH.match(arch)
        and _POOL.match(filename)
        and ".." not in filename
        and digest.startswith("sha256:")
        and _SHA256.match(digest[7:])
        and size.isdigit()
    ):
        return None
    return DebEntry(package, version, arch, filename, digest[7:], int(size))


def lock_debian(
    suite: str,
    mirror: str,
    dest: Path,
    *,
    include: Sequence[str] = BASE_INCLUDE,
    source_date_epoch: int,
    work: Path,
    log: _Log = print,
) -> DebianLock:
    """Resolve the base's packages against ``mirror`` with mmdebstrap and write the lock."""
    _need_root_tool("mmdebstrap")
    with tempfile.TemporaryDirectory(dir=work, prefix="debian-lock-") as tmp:
        scratch = Path(tmp)
        lists, status = scratch / "lists", scratch / "status"
        lists.mkdir()  # copy-out names a directory: the file lands as scratch/status
        log(f"resolving Debian {suite} with {','.join(include)} against {mirror} (mmdebstrap)")
        run(["mmdebstrap", "--variant=minbase", "--mode=root", "--format=null", MERGED_USR,
             f"--include={','.join(include)}",
             f'--customize-hook=sync-out /var/lib/apt/lists "{lists}"',
             f'--customize-hook=copy-out /var/lib/dpkg/status "{scratch}"',
             suite, "/dev/null", mirror])  # fmt: skip
        installed = [
            (fields["Package"], fields["Version"], fields["Architecture"])
            for fields in _stanzas(status.read_text())
            if fields.get("Status", "").endswith(" installed")
        ]
        index: dict[tuple[str, str, str], dict[str, str]] = {}
        for packages in lists.glob("*_Packages"):
            for fields in _stanzas(packages.read_text()):
                key = (fields["Package"], fields["Version"], fields["Architecture"])
                index[key] = fields
    entries = []
    for key in sorted(installed):
        found = index.get(key)
        if found is None:
            raise ExperimentExecutionError(
                f"{' '.join(key)} was installed but is not in the mirror's index.",
                hint="lock again; the mirror may have been updating.",
            )
        entries.append(DebEntry(*key, fields["Filename"], fields["SHA256"], int(fields["Size"])))
    lock = DebianLock(suite, tuple(include), source_date_epoch, tuple(entries))
    dest.write_text(lock.text())
    log(f"{dest}: {len(entries)} Debian packages")
    return lock


def fetch_debs(
    entries: Iterable[DebEntry], mirror: str, cache: Path, *, log: _Log = print
) -> list[Path]:
    """Each locked ``.deb`` from the cache or the mirror, its SHA-256 checked; their paths.

    A file the mirror no longer carries is an error naming it and the re-lock command.
    """
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    fetched = 0
    for entry in entries:
        path = cache / f"{entry.sha256}.deb"
        if not (path.is_file() and _sha256(path) == entry.sha256):
            url = f"{mirror.rstrip('/')}/{entry.filename}"
            part = path.with_suffix(".part")
            try:
                # The configured mirror (RUNNER_DEBIAN_MIRROR); the hash is checked below.
                with urllib.request.urlopen(url, timeout=120) as response, part.open("wb") as out:  # noqa: S310
                    shutil.copyfileobj(response, out, 1 << 20)
            except urllib.error.HTTPError as e:
                part.unlink(missing_ok=True)
                if e.code in (404, 410):
                    raise ExperimentExecutionError(
                        f"The mirror no longer carries {entry.package} {entry.version} "
                        f"({entry.arch}): {url} answered {e.code}.",
                        hint=f"re-lock with `{RELOCK}` (the image then changes and gets a "
                        "new ID), or point RUNNER_DEBIAN_MIRROR at a mirror that keeps it.",
                    ) from e
                raise ExperimentExecutionError(
                    f"Downloading {url} failed: {e}", hint="check RUNNER_DEBIAN_MIRROR."
                ) from e
            except OSError as e:
                part.unlink(missing_ok=True)
                raise ExperimentExecutionError(
                    f"Downloading {url} failed: {e}",
                    hint="the build needs the Debian mirror (RUNNER_DEBIAN_MIRROR).",
                ) from e
            digest = _sha256(part)
            if digest != entry.sha256:
                part.unlink()
                raise ExperimentExecutionError(
                    f"{url} has SHA-256 {digest}, the lock says {entry.sha256}.",
                    hint=f"the mirror serves another file under this name; `{RELOCK}` if "
                    "Debian replaced it, else suspect the mirror.",
                )
            part.rename(path)
            fetched += 1
        paths.append(path)
    if fetched:
        log(f"downloaded {fetched} Debian packages, each checked against the lock")
    return paths


def local_repository(root: Path, debs: Sequence[Path], suite: str) -> str:
    """A flat apt repository holding ``debs`` alone; its ``sources.list`` line."""
    root.mkdir(parents=True)
    stanzas = []
    for deb in sorted(debs):
        shutil.copyfile(deb, root / deb.name)
        control = run(["dpkg-deb", "-f", str(deb)]).rstrip("\n")
        stanzas.append(
            f"{control}\nFilename: ./{deb.name}\nSize: {deb.stat().st_size}\n"
            f"SHA256: {_sha256(deb)}\n"
        )
    packages = "\n".join(stanzas).encode()
    (root / "Packages").write_bytes(packages)
    (root / "Release").write_text(
        f"Suite: {suite}\nCodename: {suite}\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n"
    )
    return f"deb [trusted=yes] copy://{root} ./"


def bootstrap(
    lock: DebianLock, repository: str, target: Path, *, customize: Sequence[str] = ()
) -> None:
    """mmdebstrap the lock's packages (and nothing else) from ``repository`` into ``target``."""
    _need_root_tool("mmdebstrap")
    names = [entry.package for entry in lock.entries]
    env = {**_clean_env(), "SOURCE_DATE_EPOCH": str(lock.source_date_epoch)}
    # Every locked package by name: the repository holds nothing else, so apt picks these.
    run(["mmdebstrap", "--variant=essential", "--mode=root", "--format=tar", MERGED_USR,
         f"--include={','.join(names)}",
         *(f"--customize-hook={hook}" for hook in customize),
         lock.suite, str(target), repository], env=env)  # fmt: skip


def resolve_extra(
    packages: Sequence[str],
    base: DebianLock,
    mirror: str,
    work: Path,
    *,
    status: str,
    log: _Log = print,
) -> list[DebEntry]:
    """The ``.deb`` files ``packages`` need beyond the base: apt's resolver, nothing installed.

    apt runs in a scratch directory of its own (its own configuration, lists and
    cache, and ``status``: the base's dpkg status file, so it knows what is
    installed) and only simulates; each file's version, pool path and SHA-256
    then come from the mirror's signed index (``apt-cache show``).
    """
    for name in packages:
        if not valid_package_name(name):
            raise ExperimentExecutionError(
                f"{name[:100]!r} is not a Debian package name.",
                hint="--debian takes package names only (libgomp1, libgl1, ...).",
            )
    with tempfile.TemporaryDirectory(dir=work, prefix="debian-resolve-") as tmp:
        scratch = Path(tmp)
        env = _apt_environment(scratch, base, mirror, status)
        log(f"resolving Debian packages {' '.join(packages)} against {mirror} (apt)")
        run(["apt-get", "update", "-qq"], env=env)
        simulated = run(
            ["apt-get", "install", "--simulate", "--no-install-recommends", "-qq", *packages],
            env=env,
        )
        # "Inst NAME (VERSION RELEASE [ARCH])"; an upgrade reads "Inst NAME [OLD] (VERSION ...".
        wanted = re.findall(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ", simulated, re.M)
        entries = []
        for name, version in wanted:
            shown = run(["apt-cache", "show", "--no-all-versions", f"{name}={version}"], env=env)
            stanza = (_stanzas(shown) or [{}])[0]
            entry = _entry(
                [stanza.get("Package", ""), stanza.get("Version", ""),
                 stanza.get("Architecture", ""), stanza.get("Filename", ""),
                 f"sha256:{stanza.get('SHA256', '')}", stanza.get("Size", "")]
            )  # fmt: skip
            if entry is None:
                raise ExperimentExecutionError(
                    f"apt's index describes {name} {version} oddly.", hint="try again later."
                )
            entries.append(entry)
    return sorted(entries, key=lambda e: e.package)


def _apt_environment(scratch: Path, base: DebianLock, mirror: str, status: str) -> dict[str, str]:
    """An apt of its own in ``scratch``, read first (``APT_CONFIG``): no host setting counts."""
    for sub in ("lists/partial", "archives/partial", "parts", "preferences.d", "trusted.gpg.d"):
        (scratch / sub).mkdir(parents=True)
    (scratch / "sources.list").write_text(f"deb {mirror} {base.suite} main\n")
    (scratch / "status").write_text(status)
    settings = {
        "Dir": "/",
        "Dir::State": scratch,
        "Dir::State::status": scratch / "status",
        "Dir::State::Lists": scratch / "lists",
        "Dir::Cache": scratch,
        "Dir::Cache::archives": scratch / "archives",
        "Dir::Etc::SourceList": scratch / "sources.list",
        "Dir::Etc::SourceParts": scratch / "parts",
        "Dir::Etc::Parts": scratch / "parts",
        "Dir::Etc::Preferences": scratch / "preferences",
        "Dir::Etc::PreferencesParts": scratch / "preferences.d",
        "Dir::Etc::TrustedParts": scratch / "trusted.gpg.d",
        "Dir::Etc::Trusted": "/usr/share/keyrings/debian-archive-keyring.gpg",
        "APT::Architecture": "amd64",
        "APT::Architectures": "amd64",
        "Acquire::GzipIndexes": "false",
        "Acquire::Languages": "none",
        "Debug::NoLocking": "1",
    }
    config = scratch / "apt.conf"
    config.write_text("".join(f'{key} "{value}";\n' for key, value in settings.items()))
    return {**_clean_env(), "APT_CONFIG": str(config)}


def write_extra_lock(path: Path, asked: Sequence[str], entries: Sequence[DebEntry]) -> None:
    """A user image's Debian packages: what was asked for, then every file it needs."""
    path.write_text(
        "# Debian packages added to a user image (--debian), resolved against the mirror\n"
        f"# by `runner image build --debian`; regenerate, never edit.\nasked: {' '.join(asked)}\n"
        + "".join(entry.line() + "\n" for entry in entries)
    )


def read_extra_lock(path: Path) -> list[DebEntry]:
    entries = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("asked: "):
            continue
        fields = line.split(" ")
        entry = _entry(fields) if len(fields) == 6 else None
        if entry is None:
            raise ExperimentExecutionError(
                f"{path}, line {number}: not a Debian lock entry: {line[:200]!r}",
                hint="lock again with `runner image build --requirements FILE --debian PKG ...`.",
            )
        entries.append(entry)
    return entries


def unpack_debs(debs: Sequence[Path], target: Path) -> None:
    """Unpack ``debs`` into ``target`` with ``dpkg-deb -x``: files only, no script runs."""
    target.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(target)])


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            stanzas.append(fields)
    return stanzas


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _clean_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "HOME", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def _need_root_tool(tool: str) -> None:
    if shutil.which(tool) is None or os.geteuid() != 0:
        raise ExperimentExecutionError(
            f"Building the base image needs {tool}, run as root.",
            hint=f"as root: apt-get install -y {tool} (scripts/setup.sh does it).",
        )


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise ExperimentExecutionError(
            f"{cmd[0]} failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-3000:]}",
            hint="read the output above; the build needs the Debian mirror.",
        )
    return result.stdout


__all__ = [
    "DEBIAN_LOCK",
    "DebEntry",
    "DebianLock",
    "bootstrap",
    "fetch_debs",
    "local_repository",
    "lock_debian",
    "read_debian_lock",
    "resolve_extra",
    "unpack_debs",
]
