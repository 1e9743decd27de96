"""Conformance: proof that this host's sandbox enforces every control of the security
model, by attacking it from inside (``runner doctor --conformance``)."""

from runner.conformance.probes import PROBES, Finding, Probe
from runner.conformance.suite import Conformance, run_conformance

__all__ = ["PROBES", "Conformance", "Finding", "Probe", "run_conformance"]
