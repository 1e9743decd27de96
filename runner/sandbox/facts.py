"""The machine as the sandbox sees it, asked by the runner's own code before the script.

``SOURCE`` defines ``_runner_facts()``: the kernel release, the CPU's model and
flags, the CPUs the sandbox may use, the SHA-256 of each lock the image carries,
and the BLAS libraries numpy (and scipy) use with the kernel each chose for this
CPU. It returns one line, ``MARKER`` and the facts as JSON.

- **Cold**: the sandbox's ``sh`` runs ``python -I -S -c COLD`` before the script
  (``runner.sandbox.policy.self_limited``) and writes the line to stderr, where
  the output collector takes it off (``runner.sandbox.streams``). Without
  site-packages nothing of numpy is imported: its bundled OpenBLAS is loaded with
  ``ctypes`` and asked (about 0.1 s; importing numpy would cost 0.3 s). If the
  probe fails, ``sh`` writes an empty record, so the script can never be first.
- **Warm**: the bootstrap (``runner.backends.bootstrap``) calls it after the
  preload, before it says it is ready: numpy is loaded, so threadpoolctl (which
  scikit-learn loads) reports the very libraries the script will use. What it
  imports is taken out of ``sys.modules`` again.

Both run before the script, so the script cannot shape them; the host still
parses them as untrusted (bounded, validated) text.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from runner.core.provenance import SandboxFacts

MARKER = b"\x00experiment-runner-facts "
#: A facts line longer than this is not one (the script's stderr, then).
MAX_LINE = 64 * 1024

SOURCE = r"""
def _runner_facts():
    import os, sys
    out = {}
    try:
        out["kernel"] = os.uname().release
    except Exception:
        pass
    try:
        cpu = {}
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                cpu[key.strip()] = value.strip()
        out["cpu_model"] = cpu.get("model name")
        out["cpu_flags"] = sorted(set(cpu.get("flags", "").split()))
    except OSError:
        pass
    try:
        out["cpus"] = len(os.sched_getaffinity(0))
    except Exception:
        pass
    locks = {}
    try:
        import hashlib
        where = "/usr/share/experiment-runner"
        for name in sorted(os.listdir(where)):
            if name.endswith(".lock"):
                with open(os.path.join(where, name), "rb") as f:
                    locks[name] = hashlib.sha256(f.read()).hexdigest()
    except Exception:
        pass
    out["locks"] = locks
    blas = []
    LAYERS = {0: "disabled", 1: "pthreads", 2: "openmp"}
    pools = sys.modules.get("threadpoolctl")
    if pools is not None and "numpy" in sys.modules:
        try:
            blas = [
                {k: v for k, v in info.items() if v is None or isinstance(v, (str, int))}
                for info in pools.threadpool_info()
                if info.get("user_api") == "blas"
            ]
            out["method"] = "threadpoolctl"
        except Exception:
            blas = []
    if not blas:
        out["method"] = "ctypes"
        try:
            import ctypes, glob
            # Without site (-S), sys.prefix is the base interpreter's, not the venv's.
            venv = os.path.dirname(os.path.dirname(sys.executable))
            site = "%s/lib/python%d.%d/site-packages" % (venv, *sys.version_info[:2])
            paths = glob.glob(site + "/numpy.libs/*openblas*")
            paths += glob.glob(site + "/scipy.libs/*openblas*")
            for path in paths:
                lib = ctypes.CDLL(path)
                names = ("scipy_openblas", "openblas")
                for prefix, suffix in [(n, s) for n in names for s in ("64_", "")]:
                    try:
                        config = getattr(lib, prefix + "_get_config" + suffix)
                    except AttributeError:
                        continue
                    config.restype = ctypes.c_char_p
                    corename = getattr(lib, prefix + "_get_corename" + suffix)
                    corename.restype = ctypes.c_char_p
                    words = (config() or b"").decode("ascii", "replace").split()
                    parallel = getattr(lib, prefix + "_get_parallel" + suffix)()
                    blas.append({
                        "user_api": "blas",
                        "internal_api": "openblas",
                        "version": words[1] if len(words) > 1 and words[0] == "OpenBLAS" else None,
                        "architecture": (corename() or b"").decode("ascii", "replace"),
                        "threading_layer": LAYERS.get(parallel, "unknown"),
                        "num_threads": getattr(lib, prefix + "_get_num_threads" + suffix)(),
                        "filepath": path,
                    })
                    break
        except Exception:
            pass
    out["blas"] = sorted(blas, key=lambda b: str(b.get("filepath")))
    import json
    return b"MARKER" + json.dumps(out, sort_keys=True).encode("ascii") + b"\n"
""".replace('b"MARKER"', repr(MARKER))

#: The cold probe: ``python -I -S -c COLD`` prints the line on its stdout.
COLD = SOURCE + "\nimport os\nos.write(1, _runner_facts())\n"
#: What ``sh`` prints instead when the probe fails: a record with nothing in it.
EMPTY = MARKER + b"{}\n"


def parse(line: bytes) -> SandboxFacts | None:
    """The facts in one ``MARKER`` line (without its newline), or None if it holds none."""
    if not line.startswith(MARKER) or len(line) > MAX_LINE:
        return None
    try:
        data = json.loads(line[len(MARKER) :])
        if not isinstance(data, dict) or not data:
            return None
        return SandboxFacts.model_validate(data)
    except (ValueError, ValidationError, RecursionError):
        return None


def take(data: bytes) -> tuple[SandboxFacts | None, bytes]:
    """The facts of the first ``MARKER`` line in ``data``, and ``data`` without that line."""
    at = data.find(MARKER)
    if at < 0:
        return None, data
    end = data.find(b"\n", at)
    if end < 0:
        return None, data
    return parse(data[at:end]), data[:at] + data[end + 1 :]
