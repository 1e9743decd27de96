"""After a user image's build: every top-level module of its added packages must import.

The imports run in a sandbox of the new image (every control of a run, no
network). A module that fails for a shared library the image lacks is a build
error naming the library and, where Debian's Contents index knows it, the
package that ships it (``runner image build --debian PKG``).
"""

from __future__ import annotations

import gzip
import json
import re
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.image.listing import run_listing
from runner.image.python_lock import normalize
from runner.sandbox.engine import DockerEngine

_Log = Callable[[str], None]

#: Lists and imports each top-level module of the named distributions; one JSON line.
IMPORT_CHECK = """\
import importlib, importlib.metadata as metadata, json, sys, traceback
wanted = set(json.loads(sys.argv[1] if len(sys.argv) > 1 else {names!r}))
failed = {{}}
def norm(name):
    return name.lower().replace("_", "-").replace(".", "-")
for dist in metadata.distributions():
    if norm(dist.metadata["Name"]) not in wanted:
        continue
    tops = (dist.read_text("top_level.txt") or "").split()
    if not tops:
        tops = sorted({{str(f).split("/")[0].removesuffix(".py") for f in dist.files or ()
                       if str(f).endswith(".py") and "/" not in str(f).strip("/")
                       or str(f).endswith("/__init__.py") and str(f).count("/") == 1}})
    for top in tops:
        if not top.isidentifier() or top.startswith("_"):
            continue
        try:
            importlib.import_module(top)
        except BaseException as e:
            failed[top] = f"{{type(e).__name__}}: {{e}}"
print(json.dumps(failed))
"""
_MISSING = re.compile(r"([\w.+-]+\.so(?:\.[\w.]+)?): cannot open shared object file")


def check_imports(
    engine: DockerEngine,
    image: str,
    packages: Mapping[str, str],
    *,
    settings: ExperimentDefaults | None = None,
    log: _Log = print,
) -> None:
    """Import every top-level module of ``packages`` in a sandbox of ``image``.

    Raises naming the modules that fail, and a missing shared library's package.
    """
    if not packages:
        return
    settings = settings or ExperimentDefaults()
    names = sorted(normalize(name) for name in packages)
    log(f"importing the modules of {', '.join(names)} in a sandbox of {image}")
    output = run_listing(engine, image, IMPORT_CHECK.format(names=json.dumps(names)))
    failed: dict[str, str] = json.loads(output.strip().splitlines()[-1])
    if not failed:
        return
    libraries = sorted({m.group(1) for error in failed.values() for m in _MISSING.finditer(error)})
    providers = {lib: provider(lib, settings) for lib in libraries}
    lines = [f"{module}: {error[:300]}" for module, error in sorted(failed.items())]
    if libraries:
        named = [f"{lib} (in Debian's {providers[lib]})" if providers[lib] else lib
                 for lib in libraries]  # fmt: skip
        packages_hint = " ".join(p for p in providers.values() if p)
        hint = (
            f"the image lacks {', '.join(named)}: add "
            + (f"--debian {packages_hint}" if packages_hint else "the Debian package that ships it")
            + " to `runner image build`."
        )
    else:
        hint = "the package imports badly in the sandbox; try it in the image with `runner run`."
    raise ExperimentExecutionError(
        f"{image} was built, but its modules do not import:\n" + "\n".join(lines), hint=hint
    )


def provider(library: str, settings: ExperimentDefaults) -> str | None:
    """The Debian package shipping ``library`` in /usr/lib or /lib, from the Contents index."""
    index = contents_index(settings)
    if index is None:
        return None
    suffix = f"/{library}"
    with gzip.open(index, "rt", encoding="utf-8", errors="replace") as file:
        for line in file:
            path, _, where = line.rstrip("\n").rpartition(" ")
            path = path.strip()
            if path.endswith(suffix) and ("lib/" in path):
                return where.split(",")[0].rsplit("/", 1)[-1]
    return None


def contents_index(settings: ExperimentDefaults) -> Path | None:
    """Debian's ``Contents-amd64.gz`` for the suite, cached; None when it cannot be had."""
    from runner.image.definition import DEBIAN_SUITE

    path = settings.cache_dir / "debian" / f"Contents-{DEBIAN_SUITE}-amd64.gz"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    url = f"{settings.debian_mirror.rstrip('/')}/dists/{DEBIAN_SUITE}/main/Contents-amd64.gz"
    part = path.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=300) as response, part.open("wb") as out:  # noqa: S310 (the configured mirror)
            while block := response.read(1 << 20):
                out.write(block)
    except OSError:
        part.unlink(missing_ok=True)
        return None
    part.rename(path)
    return path
