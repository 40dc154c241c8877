"""SHA-256 for the small things the model hashes (a spec, a lock, a requirements file).

The model is on the path of every quick command (`validate`, `render`), and `hashlib`
loads OpenSSL when it is imported: about 2 ms of a command that should take under 0.1 s.
The interpreter's own SHA-256 gives the same digests without it. Large files (layers,
.debs, wheels) are hashed with `hashlib`, whose OpenSSL is the faster on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import sha256
else:
    try:
        from _sha2 import sha256  # Python 3.12 and later
    except ImportError:
        try:
            from _sha256 import sha256  # Python 3.11
        except ImportError:  # an interpreter built without them
            from hashlib import sha256

__all__ = ["file_sha256", "sha256"]

#: Files up to this size are hashed with the interpreter's SHA-256, larger ones with
#: OpenSSL's (several times faster per byte, once its 2 ms import is paid).
SMALL_FILE = 1 << 20


def file_sha256(path: Path) -> bytes:
    """The sha256 digest of the file at `path`; a large one is read in pieces."""
    if path.stat().st_size <= SMALL_FILE:
        return sha256(path.read_bytes()).digest()
    import hashlib

    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()
