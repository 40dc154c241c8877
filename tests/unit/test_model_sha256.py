"""The model's SHA-256 (the interpreter's, no OpenSSL) gives hashlib's digests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from imagesmith.model.sha256 import SMALL_FILE, file_sha256, sha256


@pytest.mark.parametrize("size", [0, 1, 4096, SMALL_FILE, SMALL_FILE + 1, 3 * SMALL_FILE + 7])
def test_files_small_and_large_hash_as_hashlib_hashes_them(tmp_path: Path, size: int) -> None:
    path = tmp_path / "data"
    data = os.urandom(size)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).digest()
    assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()


def test_pieces_hash_as_the_whole() -> None:
    whole = sha256(b"imagesmith")
    pieces = sha256()
    pieces.update(b"image")
    pieces.update(b"smith")
    assert pieces.digest() == whole.digest() == hashlib.sha256(b"imagesmith").digest()
