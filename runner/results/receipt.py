"""A receipt a reviewer can check: an in-toto attestation of one result.

The statement (in-toto Statement v1, built with ``in-toto-attestation``) has the
script and each artifact as subjects, by SHA-256, and as its predicate the
result's provenance and metrics. It travels in a DSSE envelope
(``securesystemslib``), signed when a private key is given. ``verify`` checks
the statement's form, that its subjects are the ones its predicate names, and,
given the public key, the signature: a changed byte of the payload fails it.
Needs the ``receipt`` extra: ``pip install 'experiment-runner[receipt]'``.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentResult
from runner.core.provenance import Provenance

#: What the predicate is: this runner's record of one run.
PREDICATE_TYPE = "urn:experiment-runner:run:v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


def _libraries() -> Any:
    try:
        from google.protobuf import json_format
        from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
        from in_toto_attestation.v1.statement import Statement
        from securesystemslib.dsse import Envelope
        from securesystemslib.signer import CryptoSigner, SSlibKey
    except ImportError as e:
        raise ExperimentExecutionError(
            f"Receipts need the in-toto libraries ({e.name} is missing).",
            hint="pip install 'experiment-runner[receipt]'.",
        ) from e
    return json_format, ResourceDescriptor, Statement, Envelope, CryptoSigner, SSlibKey


def statement(result: ExperimentResult) -> dict[str, Any]:
    """The in-toto statement of ``result`` as JSON data (validated by in-toto-attestation)."""
    json_format, ResourceDescriptor, Statement, _e, _c, _k = _libraries()
    provenance = result.provenance
    if provenance is None or result.run_id is None:
        raise ExperimentExecutionError(
            "This result has no provenance (it never reached a sandbox): nothing to attest.",
            hint="a receipt is for a result that ran.",
        )
    subjects = [
        ResourceDescriptor(
            name=f"script:{Path(provenance.script_path).name}",
            digest={"sha256": provenance.script_sha256},
        ).pb
    ]
    subjects += [
        ResourceDescriptor(name=f"artifact:{a.name}", digest={"sha256": a.sha256}).pb
        for a in provenance.artifacts
    ]
    predicate = {
        "run_id": result.run_id,
        "experiment_name": result.experiment_name,
        "timestamp": result.timestamp.isoformat(),
        "success": result.success,
        "metrics": result.metrics,
        "provenance": provenance.model_dump(mode="json"),
    }
    made = Statement(subjects, PREDICATE_TYPE, predicate)
    made.validate()
    data: dict[str, Any] = json_format.MessageToDict(made.pb)
    return data


def write(result: ExperimentResult, key: Path | None = None) -> dict[str, Any]:
    """A DSSE envelope holding ``result``'s statement, signed with the PEM private key
    ``key`` if given (unsigned: no signatures)."""
    _j, _r, _s, Envelope, CryptoSigner, _k = _libraries()
    payload = json.dumps(statement(result), sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    if key is not None:
        envelope.sign(_signer(key, CryptoSigner))
    data: dict[str, Any] = envelope.to_dict()
    return data


def _signer(key: Path, crypto_signer: Any) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private = load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ExperimentExecutionError(
            f"Could not read the private key {key}: {e}",
            hint="give an unencrypted PEM private key (`runner receipt keygen NAME` makes one).",
        ) from e
    return crypto_signer(private)


def keygen(prefix: Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair: ``PREFIX.pem`` (private, mode 0600) and ``PREFIX.pub``."""
    _libraries()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private, public = prefix.with_suffix(".pem"), prefix.with_suffix(".pub")
    with private.open("xb") as f:
        private.chmod(0o600)
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@dataclass
class Verified:
    """What ``verify`` found: the statement's problems (none: it holds together), and the
    signatures' state."""

    problems: list[str] = field(default_factory=list)
    signatures: int = 0
    #: The signature checked with the given public key (None: no key given).
    signature_ok: bool | None = None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and self.signature_ok is not False


def verify(envelope_data: dict[str, Any], public_key: Path | None = None) -> Verified:
    """Check a receipt: the statement's form and subjects and, with ``public_key`` (PEM),
    its signature."""
    json_format, _r, Statement, Envelope, _c, SSlibKey = _libraries()
    found = Verified()
    try:
        # from_dict takes the signatures' fields out of the dicts it is given.
        envelope = Envelope.from_dict(copy.deepcopy(envelope_data))
    except (KeyError, TypeError, ValueError) as e:
        found.problems.append(f"not a DSSE envelope: {e}")
        return found
    found.signatures = len(envelope.signatures)
    if envelope.payload_type != PAYLOAD_TYPE:
        found.problems.append(f"payload type {envelope.payload_type!r}, not {PAYLOAD_TYPE!r}")
    try:
        data = json.loads(envelope.payload)
        made = Statement([], "", {})
        json_format.ParseDict(data, made.pb)
        made.validate()
    except (ValueError, json_format.ParseError) as e:
        found.problems.append(f"not an in-toto statement: {e}")
        return found
    if made.pb.predicate_type != PREDICATE_TYPE:
        found.problems.append(f"predicate type {made.pb.predicate_type!r}, not {PREDICATE_TYPE!r}")
    predicate = json_format.MessageToDict(made.pb.predicate)
    try:
        provenance = Provenance.model_validate(predicate.get("provenance"))
    except ValueError as e:
        found.problems.append(f"the predicate's provenance does not read: {e}")
        return found
    found.run_id = str(predicate.get("run_id"))
    found.metrics = dict(predicate.get("metrics") or {})
    named = {f"script:{Path(provenance.script_path).name}": provenance.script_sha256}
    named |= {f"artifact:{a.name}": a.sha256 for a in provenance.artifacts}
    subjects = {s.name: s.digest.get("sha256") for s in made.pb.subject}
    if subjects != named:
        found.problems.append("the subjects are not the script and artifacts the predicate names")
    if public_key is not None:
        found.signature_ok = _signature_ok(envelope, public_key, SSlibKey)
    return found


def _signature_ok(envelope: Any, public_key: Path, sslib_key: Any) -> bool:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.exceptions import VerificationError

    try:
        key = sslib_key.from_crypto(load_pem_public_key(public_key.read_bytes()))
    except (OSError, ValueError, TypeError) as e:
        raise ExperimentExecutionError(
            f"Could not read the public key {public_key}: {e}",
            hint="give a PEM public key (the .pub of `runner receipt keygen`).",
        ) from e
    try:
        envelope.verify([key], 1)
    except VerificationError:
        return False
    return True


def payload_of(envelope_data: dict[str, Any]) -> bytes:
    """The envelope's payload, decoded (for showing it)."""
    return base64.b64decode(str(envelope_data.get("payload", "")))
