"""Package listings read from inside a sandbox of the image (no network, every control).

What ``runner image build`` records in an image's labels and ``runner image
verify`` compares them with: the Python and Debian packages, and each installed
file against its wheel's RECORD hash.
"""

from __future__ import annotations

from collections.abc import Mapping

from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.image.definition import LOCK_IN_IMAGE
from runner.sandbox.cold import run_code
from runner.sandbox.engine import Engine
from runner.sandbox.policy import SandboxPolicy

#: A listing's own bounds: its output is large (every package, every altered file).
LISTING_TIMEOUT = 300
LISTING_OUTPUT = 16 * 1024 * 1024


def listing(packages: Mapping[str, str], sep: str) -> str:
    return " ".join(f"{name}{sep}{version}" for name, version in sorted(packages.items()))


def parse_listing(text: str, sep: str) -> dict[str, str]:
    """``{name: version}`` from a label written by ``_listing``."""
    return dict(item.split(sep, 1) for item in text.split() if sep in item)


# Listings run inside a sandboxed container (no network, read-only, no capabilities).
_DPKG = ["dpkg-query", "-W", "-f=${binary:Package}=${Version}\\n"]


DEBIAN_LISTING = f"""\
import subprocess, sys
sys.stdout.write(subprocess.run({_DPKG!r}, capture_output=True, text=True, check=True).stdout)
"""


IMAGE_LISTING = f"""\
import base64, hashlib, json, subprocess, importlib.metadata as metadata
packages, altered = {{}}, []
for dist in metadata.distributions():
    packages[dist.metadata["Name"]] = dist.version
    for record in dist.files or ():
        if record.hash is None or record.hash.mode != "sha256":
            continue
        digest = hashlib.sha256()
        try:
            with open(record.locate(), "rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            altered.append(str(record))
            continue
        if base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() != record.hash.value:
            altered.append(str(record))
try:
    with open({LOCK_IN_IMAGE!r}, "rb") as file:
        lock = hashlib.sha256(file.read()).hexdigest()
except OSError:
    lock = None
debian = subprocess.run({_DPKG!r}, capture_output=True, text=True, check=True).stdout
print(json.dumps({{"packages": packages, "altered": altered, "lock": lock, "debian": debian}}))
"""


def run_listing(engine: Engine, image: str, code: str) -> str:
    """Run ``code`` with the image's python3 in a sandbox (every control of a run); its stdout."""
    policy = SandboxPolicy(image=image, runtime=ExperimentDefaults().runtime)
    execution = run_code(
        engine, policy, code, python_executable="python3",
        timeout=LISTING_TIMEOUT, output_limit=LISTING_OUTPUT,
    )  # fmt: skip
    if execution.exit_code != 0:
        ended = "timed out" if execution.timed_out else f"exit {execution.exit_code}"
        raise ExperimentExecutionError(
            f"Listing the packages of {image} failed ({ended}):\n{execution.stderr[-2000:]}",
            hint="the image needs python3 and dpkg-query; `runner doctor` checks the sandbox.",
        )
    return execution.stdout


def debian_packages(engine: Engine, image: str) -> dict[str, str]:
    """``{package: version}`` of every Debian package in ``image``, from dpkg-query inside it."""
    return parse_listing(run_listing(engine, image, DEBIAN_LISTING), "=")
