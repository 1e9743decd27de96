"""Shared test set-up."""

import os

# The Ryuk reaper image cannot be pulled here (no registry); tests clean up themselves.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
