"""DSSE envelopes around in-toto statements, signed and checked with ed25519 keys.

The cryptography is securesystemslib's (its CryptoSigner and SSlibKey over pyca's
`cryptography`); nothing here does more than load keys and pass bytes along. Keys are
PEM files as `openssl genpkey -algorithm ed25519` / `openssl pkey -pubout` write them.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from imagesmith.attest.provenance import PAYLOAD_TYPE
from imagesmith.errors import ImagesmithError, InputError

# securesystemslib is an optional dependency (`imagesmith[sign]`), imported when used;
# its key and signer objects are passed through as Any.
SSlibKey = Any


class VerificationFailed(ImagesmithError):
    """A signature that does not verify: exit 1, as for any failed check."""


def _sslib() -> Any:
    try:
        import cryptography.hazmat.primitives.serialization  # noqa: F401
        import securesystemslib.signer
    except ImportError:
        raise InputError(
            "signing and verifying need securesystemslib and cryptography: "
            "pip install 'imagesmith[sign]'"
        ) from None
    return securesystemslib.signer


def _read_pem(source: str, text: str | None) -> bytes:
    if text is not None:
        return text.encode()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise InputError(f"{source}: cannot read the key ({exc.strerror or exc})") from None


def _public_key(public: Any, source: str) -> SSlibKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(public, Ed25519PublicKey):
        raise InputError(f"{source}: not an ed25519 key ({type(public).__name__})")
    key: SSlibKey = _sslib().SSlibKey.from_crypto(public)
    return key


def load_signer(source: str, *, pem: str | None = None) -> Any:
    """A securesystemslib signer for an unencrypted PEM ed25519 private key (file or text)."""
    _sslib()  # and with it pyca's cryptography: a clear line when they are not installed
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read_pem(source, pem)
    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InputError(
            f"{source}: not an unencrypted PEM private key; "
            "make one with `openssl genpkey -algorithm ed25519 -out lab.key`"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise InputError(f"{source}: not an ed25519 key ({type(private).__name__})")
    return _sslib().CryptoSigner(private, _public_key(private.public_key(), source))


def load_public_key(source: str) -> SSlibKey:
    """The public half for verification: a PEM public key, or the private key it belongs to."""
    _sslib()
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = _read_pem(source, None)
    if b"PRIVATE KEY" in data:
        key: SSlibKey = load_signer(source).public_key
        return key
    try:
        public = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise InputError(
            f"{source}: not a PEM public key; "
            "write one with `openssl pkey -in lab.key -pubout -out lab.pub`"
        ) from None
    return _public_key(public, source)


def sign_statement(statement_json: str, signer: Any) -> str:
    """The DSSE envelope (JSON text) of `statement_json`, signed by `signer`."""
    dsse = _dsse()
    envelope = dsse.Envelope(
        payload=statement_json.encode("utf-8"), payload_type=PAYLOAD_TYPE, signatures={}
    )
    envelope.sign(signer)
    return json.dumps(envelope.to_dict(), indent=2) + "\n"


def _dsse() -> Any:
    _sslib()
    from securesystemslib import dsse

    return dsse


def verify_envelope(text: str, key: SSlibKey, *, what: str = "envelope") -> dict[str, Any]:
    """The statement inside a DSSE envelope once `key` verified it; VerificationFailed if not."""
    from securesystemslib.exceptions import FormatError, VerificationError

    dsse = _dsse()
    try:
        data = json.loads(text)
        envelope = dsse.Envelope.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, FormatError):
        raise InputError(
            f"{what}: not a DSSE envelope (JSON with payload and signatures)"
        ) from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise VerificationFailed(
            f"{what}: payload type is {envelope.payload_type!r}, not {PAYLOAD_TYPE!r}"
        )
    try:
        envelope.verify([key], 1)
    except VerificationError:
        raise VerificationFailed(
            f"{what}: the signature does not verify with key {key.keyid[:16]}… "
            "(a different key, or the statement was changed after signing)"
        ) from None
    try:
        statement: dict[str, Any] = json.loads(envelope.payload)
    except ValueError:
        raise VerificationFailed(f"{what}: the signed payload is not JSON") from None
    return statement


def decode_payload(envelope_text: str) -> bytes:
    """The payload bytes of an envelope, without checking anything (for tests and tools)."""
    return base64.b64decode(json.loads(envelope_text)["payload"])
