"""Just enough OpenPGP to pin an apt source's key: read a key file, give its fingerprints.

An apt source's `key` is a public key (or keyring) file, ASCII-armored or binary. The lock
pins each primary key's fingerprint; the probe gives apt the binary form as `Signed-By`,
and apt itself (gpgv) checks the repository's signatures with it. Nothing here verifies
a signature: this module only tells a key from something that is not one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

_ARMOR_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_ARMOR_END = "-----END PGP PUBLIC KEY BLOCK-----"
_PUBLIC_KEY, _SECRET_KEY = 6, 5
_MAX_KEY_FILE = 1 << 20


class KeyFileError(ValueError):
    """The file is not an OpenPGP public key; the message says why, in a few words."""


@dataclass(frozen=True)
class PublicKey:
    binary: bytes
    """The key in binary OpenPGP form (what apt's `Signed-By` takes as a .gpg file)."""
    fingerprints: tuple[str, ...]
    """Each primary key's fingerprint, upper-case hex (a keyring may hold several)."""


def read_key(path: Path) -> PublicKey:
    """The public key in `path`; KeyFileError when it is not one. OSError when unreadable."""
    with path.open("rb") as f:
        data = f.read(_MAX_KEY_FILE + 1)
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError("is over 1 MiB, too large for an OpenPGP public key")
    return parse_key(data)


def parse_key(data: bytes) -> PublicKey:
    binary = _dearmor(data) if data.lstrip().startswith(b"-----BEGIN ") else data
    fingerprints = []
    first = True
    for tag, body in _packets(binary):
        if first and tag == _SECRET_KEY:
            raise KeyFileError("is a secret key; give the public key (gpg --export --armor KEYID)")
        if first and tag != _PUBLIC_KEY:
            raise KeyFileError("is not an OpenPGP public key (it does not start with one)")
        first = False
        if tag == _PUBLIC_KEY:
            fingerprints.append(_fingerprint(body))
    if not fingerprints:
        raise KeyFileError("is empty: no OpenPGP public key in it")
    return PublicKey(binary=binary, fingerprints=tuple(fingerprints))


def _dearmor(data: bytes) -> bytes:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError("is not an OpenPGP key (not ASCII armor, not binary)") from None
    lines = [line.strip() for line in text.splitlines()]
    if _ARMOR_BEGIN not in lines:
        if any(line.startswith("-----BEGIN PGP PRIVATE KEY BLOCK") for line in lines):
            raise KeyFileError("is a secret key; give the public key (gpg --export --armor KEYID)")
        raise KeyFileError(f"is ASCII armor but not a public key block ({_ARMOR_BEGIN})")
    start = lines.index(_ARMOR_BEGIN) + 1
    if _ARMOR_END not in lines[start:]:
        raise KeyFileError(f"has no {_ARMOR_END} line (cut short?)")
    body = lines[start : lines.index(_ARMOR_END, start)]
    # Armor headers ("Comment: ...") end at the first blank line.
    if "" in body and all(": " in line for line in body[: body.index("")]):
        body = body[body.index("") + 1 :]
    payload = "".join(line for line in body if line and not line.startswith("="))
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError("has an armored block that is not valid base64") from None


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) of each OpenPGP packet (RFC 9580 section 4.2)."""
    packets = []
    at = 0
    while at < len(data):
        header = data[at]
        if not header & 0x80:
            raise KeyFileError("is not an OpenPGP key (bad packet header)")
        if header & 0x40:  # new format
            tag = header & 0x3F
            at += 1
            if at >= len(data):
                raise KeyFileError("is cut short (a packet without a length)")
            first = data[at]
            if first < 192:
                length, at = first, at + 1
            elif first < 224:
                if at + 1 >= len(data):
                    raise KeyFileError("is cut short (a packet without a length)")
                length, at = ((first - 192) << 8) + data[at + 1] + 192, at + 2
            elif first == 255:
                length, at = int.from_bytes(data[at + 1 : at + 5], "big"), at + 5
            else:
                raise KeyFileError("is not an OpenPGP key (partial-length packets)")
        else:  # old format
            tag, kind = (header >> 2) & 0x0F, header & 0x03
            if kind == 3:
                raise KeyFileError("is not an OpenPGP key (indeterminate-length packet)")
            size = 1 << kind
            length = int.from_bytes(data[at + 1 : at + 1 + size], "big")
            at += 1 + size
        if at + length > len(data):
            raise KeyFileError("is cut short (a packet runs past the end of the file)")
        packets.append((tag, data[at : at + length]))
        at += length
    return packets


def _fingerprint(body: bytes) -> str:
    version = body[0] if body else 0
    if version == 4:
        return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
    if version == 6:
        return hashlib.sha256(b"\x9b" + len(body).to_bytes(4, "big") + body).hexdigest().upper()
    raise KeyFileError(f"holds a version {version} OpenPGP key, which apt cannot use (v4 or v6)")
