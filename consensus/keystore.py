"""The threshold key share at rest: one file, encrypted and authenticated, written atomically with mode 0600.

Owns the on-disk form of a :class:`consensus.frost.KeyShare` (identifier, threshold, secret share, group key
and every verifying share). The file is a fixed header followed by a ``nacl.secret.SecretBox`` (XSalsa20-
Poly1305) of a msgpack body. The box key is derived from either

* the coordinator's Ed25519 identity seed: keyed BLAKE2b with a domain string and the file's random salt, or
* a passphrase, when one is given: Argon2id (``nacl.pwhash``) with the salt and the limits named in the header,

and then bound to the whole header (keyed BLAKE2b of the header), so any change to the header, the
ciphertext, the key or the passphrase makes loading fail with :class:`KeystoreError`. The caller reads
``KEYSTORE_PASSPHRASE`` from the environment; this module takes ``passphrase: bytes | None``.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import msgpack
import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils

from consensus.frost import FrostError, KeyShare
from node.identity import KeyFileError, check_private, fsync_dir, write_private  # noqa: F401 (re-exported)

MAGIC = b"DSDNKEY\x01"
KDF_IDENTITY = 1
KDF_ARGON2ID = 2
SALT_SIZE = 16
_HEADER = struct.Struct(">8sB16sIQ")  # magic, kdf, salt, opslimit, memlimit
DEFAULT_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
DEFAULT_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_MODERATE
MAX_OPSLIMIT = 16  # refuse headers that would make loading take minutes (the header is checked only after the KDF)
MAX_MEMLIMIT = 1 << 30
# libsodium's own floors: below them the KDF raises a plain ValueError (a tampered header escaped as a traceback)
MIN_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_MIN
MIN_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_MIN
MAX_FILE_SIZE = 64 * 1024


class KeystoreError(KeyFileError):
    """The key store cannot be written or read: missing, wrong key or passphrase, tampered, or malformed.

    A KeyFileError, so a key share that does not open at start-up (DkgService.run loads it) ends the process
    with one line on stderr and exit code 2 (node/process.py), not a traceback."""


def at_rest_warning(path: Path) -> str:
    """The start-up warning of a coordinator whose key share is (or will be) encrypted without a passphrase."""
    return (f"KEYSTORE_PASSPHRASE is not set: the key share {path} is encrypted with a key derived from "
            f"{path.parent / 'identity.key'} in the same folder, so anyone who can read that folder can use the "
            f"cluster key share; set KEYSTORE_PASSPHRASE to encrypt it with a passphrase (Argon2id) instead")


def _base_key(kdf: int, salt: bytes, opslimit: int, memlimit: int,
              identity: nacl.signing.SigningKey | None, passphrase: bytes | None) -> bytes:
    if kdf == KDF_ARGON2ID:
        if passphrase is None:
            raise KeystoreError("this key store is protected by a passphrase, and none was given (set "
                                "KEYSTORE_PASSPHRASE to the one it was written with)")
        return nacl.pwhash.argon2id.kdf(32, passphrase, salt, opslimit=opslimit, memlimit=memlimit)
    if passphrase is not None:
        raise KeystoreError("this key store was written without a passphrase (encrypted with the identity key), but "
                            "KEYSTORE_PASSPHRASE is set: unset it (a key share is read the way it was written; "
                            "to protect it with a passphrase, set one before the DKG that makes it)")
    if identity is None:
        raise KeystoreError("an identity key is needed to open this key store")
    return hashlib.blake2b(b"key share at rest", key=bytes(identity), salt=salt, person=b"dsdn/keystore/v1",
                           digest_size=32).digest()


def _box(header: bytes, base_key: bytes) -> nacl.secret.SecretBox:
    return nacl.secret.SecretBox(hashlib.blake2b(header, key=base_key, person=b"dsdn/keystore/hd",
                                                 digest_size=32).digest())


def _encode(share: KeyShare) -> bytes:
    return msgpack.packb({"v": 1, "identifier": share.identifier, "threshold": share.threshold,
                          "secret_share": share.secret_share, "group_public_key": share.group_public_key,
                          "verifying_shares": [[i, share.verifying_shares[i]] for i in sorted(share.verifying_shares)]})


def _decode(body: bytes) -> KeyShare:
    try:
        d = msgpack.unpackb(body, raw=False, strict_map_key=True)
        if not isinstance(d, dict) or d.get("v") != 1 or set(d) != {"v", "identifier", "threshold", "secret_share",
                                                                     "group_public_key", "verifying_shares"}:
            raise KeystoreError("unexpected key store contents")
        pairs = d["verifying_shares"]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise KeystoreError("unexpected verifying shares")
        verifying = {i: pk for i, pk in pairs}
        if len(verifying) != len(pairs):
            raise KeystoreError("duplicate identifiers in verifying shares")
        share = KeyShare(d["identifier"], d["threshold"], d["secret_share"], d["group_public_key"], verifying)
        share.validate()
    except KeystoreError:
        raise
    except (ValueError, TypeError, FrostError, msgpack.UnpackException) as e:
        raise KeystoreError(f"key store contents are invalid: {e}") from None
    return share


def save(path: Path, share: KeyShare, *, identity: nacl.signing.SigningKey | None = None,
         passphrase: bytes | None = None, opslimit: int = DEFAULT_OPSLIMIT, memlimit: int = DEFAULT_MEMLIMIT) -> None:
    """Encrypt ``share`` to ``path`` (atomically, mode 0600) under the passphrase if given, else the identity key."""
    try:
        share.validate()
    except FrostError as e:
        raise KeystoreError(f"refusing to store an invalid key share: {e}") from None
    salt = nacl.utils.random(SALT_SIZE)
    if passphrase is not None:
        if not isinstance(passphrase, bytes) or not passphrase:
            raise KeystoreError("passphrase must be non-empty bytes")
        if not (MIN_OPSLIMIT <= opslimit <= MAX_OPSLIMIT and MIN_MEMLIMIT <= memlimit <= MAX_MEMLIMIT):
            raise KeystoreError("Argon2id limits out of range")
        header = _HEADER.pack(MAGIC, KDF_ARGON2ID, salt, opslimit, memlimit)
        base = _base_key(KDF_ARGON2ID, salt, opslimit, memlimit, None, passphrase)
    else:
        header = _HEADER.pack(MAGIC, KDF_IDENTITY, salt, 0, 0)
        base = _base_key(KDF_IDENTITY, salt, 0, 0, identity, None)
    data = header + bytes(_box(header, base).encrypt(_encode(share)))
    write_private(Path(path), data)


def load(path: Path, *, identity: nacl.signing.SigningKey | None = None, passphrase: bytes | None = None) -> KeyShare:
    """Decrypt and validate the key share at ``path``; KeystoreError if it cannot be opened or is not intact."""
    path = Path(path)
    try:
        st = path.stat()
        try:
            check_private(path, st)
        except KeyFileError as exc:
            raise KeystoreError(str(exc)) from None
        if st.st_size > MAX_FILE_SIZE:
            raise KeystoreError(f"{path}: too large to be a key store")
        data = path.read_bytes()
    except OSError as e:
        raise KeystoreError(f"{path}: cannot read key store: {e.strerror or e}") from None
    if len(data) < _HEADER.size + nacl.secret.SecretBox.NONCE_SIZE + nacl.secret.SecretBox.MACBYTES:
        raise KeystoreError(f"{path}: truncated key store")
    header = data[: _HEADER.size]
    magic, kdf, salt, opslimit, memlimit = _HEADER.unpack(header)
    if magic != MAGIC:
        raise KeystoreError(f"{path}: not a key store (bad magic or unsupported version)")
    if kdf == KDF_IDENTITY:
        if opslimit or memlimit:
            raise KeystoreError(f"{path}: corrupt header")
    elif kdf == KDF_ARGON2ID:
        if not (MIN_OPSLIMIT <= opslimit <= MAX_OPSLIMIT and MIN_MEMLIMIT <= memlimit <= MAX_MEMLIMIT):
            raise KeystoreError(f"{path}: Argon2id limits in the header are out of range (tampered?)")
    else:
        raise KeystoreError(f"{path}: unknown key derivation {kdf}")
    try:
        base = _base_key(kdf, salt, opslimit, memlimit, identity, passphrase)
    except KeystoreError as e:
        raise KeystoreError(f"{path}: {e}") from None
    try:
        body = _box(header, base).decrypt(data[_HEADER.size:])
    except nacl.exceptions.CryptoError:
        raise KeystoreError(f"{path}: cannot decrypt the key store: wrong identity key or passphrase, or the file "
                            f"was tampered with") from None
    try:
        return _decode(body)
    except KeystoreError as e:
        raise KeystoreError(f"{path}: {e}") from None
