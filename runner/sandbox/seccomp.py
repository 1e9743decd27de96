"""The project's own seccomp profile, applied to every container.

``seccomp.json`` beside this module is the default profile of Docker 20.10.24
(moby's ``profiles/seccomp/default.json``, Apache-2.0) with what a scikit-learn
script has no use for taken out; SECURITY.md lists each removal and why. It only
ever removes: nothing the engine's default refuses is allowed here.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files


@cache
def profile() -> str:
    """The profile as minified JSON, the form the engine's API takes after ``seccomp=``."""
    text = files("runner.sandbox").joinpath("seccomp.json").read_text(encoding="utf-8")
    return json.dumps(json.loads(text), separators=(",", ":"))


def security_option() -> str:
    """The ``security_opt`` entry that applies the profile (the API wants its text, not a path)."""
    return f"seccomp={profile()}"
