"""The coordinator's Ed25519 identity key: generated into the data dir on first start, then reused."""

from __future__ import annotations

import os
from pathlib import Path

import nacl.signing

KEY_FILE = "identity.key"


class KeyFileError(ValueError):
    """The key file exists but is not a 32-byte Ed25519 seed."""


def load_or_create(data_dir: Path) -> nacl.signing.SigningKey:
    """Read ``<data_dir>/identity.key`` (32-byte seed), creating it (mode 0600) if missing."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise KeyFileError(f"{path}: expected a 32-byte Ed25519 seed, found {len(seed)} bytes")
        return nacl.signing.SigningKey(seed)
    key = nacl.signing.SigningKey.generate()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, bytes(key))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key
