"""Key store: round trips under the identity key and under a passphrase; mode 0600 and atomic replacement;
tampered files, wrong keys and wrong passphrases fail with KeystoreError."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.pwhash
import nacl.signing
import pytest

from consensus import frost, keystore
from consensus.keystore import KeystoreError

FAST = {"opslimit": nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE, "memlimit": nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE}
HEADER = keystore._HEADER.size


@pytest.fixture(scope="module")
def share() -> frost.KeyShare:
    return frost.trusted_dealer_key_shares(5, 3)[2]


@pytest.fixture
def identity() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_with_the_identity_key(tmp_path: Path, share: frost.KeyShare,
                                          identity: nacl.signing.SigningKey) -> None:
    path = tmp_path / "threshold.key"
    keystore.save(path, share, identity=identity)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["threshold.key"]  # no temporary file left behind
    data = path.read_bytes()
    assert share.secret_share not in data and share.group_public_key not in data  # encrypted, not just signed
    loaded = keystore.load(path, identity=identity)
    assert loaded == share
    assert loaded.verifying_shares == share.verifying_shares and loaded.identifier == 2 and loaded.threshold == 3


def test_round_trip_with_a_passphrase(tmp_path: Path, share: frost.KeyShare) -> None:
    path = tmp_path / "threshold.key"
    keystore.save(path, share, passphrase=b"correct horse", **FAST)
    assert keystore.load(path, passphrase=b"correct horse") == share
    with pytest.raises(KeystoreError, match="wrong identity key or passphrase"):
        keystore.load(path, passphrase=b"correct horsf")
    with pytest.raises(KeystoreError, match="protected by a passphrase"):
        keystore.load(path, identity=nacl.signing.SigningKey.generate())


def test_default_argon2id_limits(tmp_path: Path, share: frost.KeyShare) -> None:
    path = tmp_path / "k"
    keystore.save(path, share, passphrase=b"pw")
    _, kdf, _, ops, mem = keystore._HEADER.unpack(path.read_bytes()[:HEADER])
    assert (kdf, ops, mem) == (keystore.KDF_ARGON2ID, nacl.pwhash.argon2id.OPSLIMIT_MODERATE,
                               nacl.pwhash.argon2id.MEMLIMIT_MODERATE)
    assert keystore.load(path, passphrase=b"pw") == share


def test_wrong_identity_key_fails(tmp_path: Path, share: frost.KeyShare, identity: nacl.signing.SigningKey) -> None:
    path = tmp_path / "k"
    keystore.save(path, share, identity=identity)
    with pytest.raises(KeystoreError, match="cannot decrypt the key store: wrong identity key or passphrase"):
        keystore.load(path, identity=nacl.signing.SigningKey.generate())
    with pytest.raises(KeystoreError) as err:  # the file, the variable and what to do: one line
        keystore.load(path, identity=identity, passphrase=b"x")
    assert str(err.value).startswith(f"{path}: this key store was written without a passphrase")
    assert "KEYSTORE_PASSPHRASE is set: unset it" in str(err.value)
    keystore.save(path, share, passphrase=b"pw")
    with pytest.raises(KeystoreError, match=f"^{path}: .*none was given .*KEYSTORE_PASSPHRASE"):
        keystore.load(path, identity=identity)
    keystore.save(path, share, identity=identity)
    with pytest.raises(KeystoreError, match="identity key is needed"):
        keystore.load(path)


@pytest.mark.parametrize(("where", "error"), [
    (0, "not a key store"), (8, "unknown key derivation"), (12, "cannot decrypt"),  # magic, kdf, salt
    (26, "corrupt header"), (HEADER + 3, "cannot decrypt"), (HEADER + 40, "cannot decrypt"),  # limits, nonce, body
    (-1, "cannot decrypt")])  # Poly1305 tag
def test_tampered_file_fails(tmp_path: Path, share: frost.KeyShare, identity: nacl.signing.SigningKey,
                             where: int, error: str) -> None:
    path = tmp_path / "k"
    keystore.save(path, share, identity=identity)
    _flip(path, where % path.stat().st_size)
    with pytest.raises(KeystoreError, match=error):
        keystore.load(path, identity=identity)


def test_tampered_argon2id_limits_are_refused_before_running_the_kdf(tmp_path: Path, share: frost.KeyShare) -> None:
    path = tmp_path / "k"
    keystore.save(path, share, passphrase=b"pw", **FAST)
    data = bytearray(path.read_bytes())
    magic, kdf, salt, ops, _ = keystore._HEADER.unpack(bytes(data[:HEADER]))
    data[:HEADER] = keystore._HEADER.pack(magic, kdf, salt, ops, 1 << 40)  # would allocate a terabyte
    path.write_bytes(bytes(data))
    with pytest.raises(KeystoreError, match="out of range"):
        keystore.load(path, passphrase=b"pw")
    for low_ops, low_mem in ((ops, 1), (ops, nacl.pwhash.argon2id.MEMLIMIT_MIN - 1), (0, FAST["memlimit"])):
        # below libsodium's floors: its KDF raised a plain ValueError, a traceback at start-up (a reviewer's find)
        data[:HEADER] = keystore._HEADER.pack(magic, kdf, salt, low_ops, low_mem)
        path.write_bytes(bytes(data))
        with pytest.raises(KeystoreError, match="out of range"):
            keystore.load(path, passphrase=b"pw")
    with pytest.raises(KeystoreError, match="out of range"):
        keystore.save(path, share, passphrase=b"pw", opslimit=ops, memlimit=1)
    data[:HEADER] = keystore._HEADER.pack(magic, kdf, salt, ops + 1, FAST["memlimit"])  # in range, but not the same
    path.write_bytes(bytes(data))
    with pytest.raises(KeystoreError, match="cannot decrypt"):
        keystore.load(path, passphrase=b"pw")


def test_truncated_missing_and_too_open_files_fail(tmp_path: Path, share: frost.KeyShare,
                                                   identity: nacl.signing.SigningKey) -> None:
    path = tmp_path / "k"
    with pytest.raises(KeystoreError, match="cannot read"):
        keystore.load(path, identity=identity)
    keystore.save(path, share, identity=identity)
    data = path.read_bytes()
    for cut in (10, HEADER + 20, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(KeystoreError, match=r"truncated|cannot decrypt"):
            keystore.load(path, identity=identity)
    path.write_bytes(data)
    path.chmod(0o644)
    with pytest.raises(KeystoreError, match="too open"):
        keystore.load(path, identity=identity)
    path.chmod(0o600)
    assert keystore.load(path, identity=identity) == share


def test_replacement_is_atomic(tmp_path: Path, share: frost.KeyShare, identity: nacl.signing.SigningKey,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k"
    keystore.save(path, share, identity=identity)
    before = path.read_bytes()
    other = frost.trusted_dealer_key_shares(4, 3)[1]

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        keystore.save(path, other, identity=identity)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["k"]  # old file intact, no stray temp file
    monkeypatch.undo()
    keystore.save(path, other, identity=identity)
    assert keystore.load(path, identity=identity) == other != share


def test_invalid_contents_are_refused(tmp_path: Path, share: frost.KeyShare, identity: nacl.signing.SigningKey) -> None:
    broken = frost.KeyShare(share.identifier, share.threshold, frost.trusted_dealer_key_shares(5, 3)[2].secret_share,
                            share.group_public_key, share.verifying_shares)
    with pytest.raises(KeystoreError, match="invalid key share"):
        keystore.save(tmp_path / "k", broken, identity=identity)
    assert not (tmp_path / "k").exists()
    # a well-encrypted file whose contents do not validate (as if written by a buggy version) is refused on load
    path = tmp_path / "k2"
    keystore.save(path, share, identity=identity)
    data = path.read_bytes()
    header, salt = data[:HEADER], keystore._HEADER.unpack(data[:HEADER])[2]
    base = keystore._base_key(keystore.KDF_IDENTITY, salt, 0, 0, identity, None)
    path.write_bytes(header + bytes(keystore._box(header, base).encrypt(keystore._encode(broken))))
    with pytest.raises(KeystoreError, match="contents are invalid"):
        keystore.load(path, identity=identity)
    with pytest.raises(KeystoreError, match="non-empty"):
        keystore.save(path, share, passphrase=b"")


def test_a_short_write_is_an_error_not_a_truncated_file_in_place(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.write`` may write fewer bytes than given (a nearly full disk); the short file was fsynced and renamed
    into place without an error (a truncated key share: its member stranded; a reviewer's reproduction). Every
    byte is written, or the save fails and the old file stays."""
    from node import identity

    identity_key = nacl.signing.SigningKey(bytes([1]) * 32)
    share = frost.trusted_dealer_key_shares(4, 3)[1]
    path = tmp_path / "k.keyshare"
    keystore.save(path, share, identity=identity_key)
    before = path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(identity.os, "write", lambda fd, data: real_write(fd, bytes(data)[:100]))
    other = frost.trusted_dealer_key_shares(4, 3)[2]
    keystore.save(path, other, identity=identity_key)  # written 100 bytes at a time, whole
    monkeypatch.setattr(identity.os, "write", lambda fd, data: 0)  # a disk that takes nothing more
    with pytest.raises(OSError):
        keystore.save(path, share, identity=identity_key)
    monkeypatch.undo()
    assert keystore.load(path, identity=identity_key) == other and path.read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_key_store_provisioned_by_another_user_is_taken(tmp_path: Path, share: frost.KeyShare,
                                                        identity: nacl.signing.SigningKey,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Root provisions the keys and hands them to the service user (deploy/compose.yaml's init, run again at every
    ``up``): an owner check refused them at the second ``up`` (a regression review). The mode alone is checked."""
    import os

    from node import identity as identity_mod

    path = tmp_path / "k"
    keystore.save(path, share, identity=identity)
    made = identity_mod.load_or_create(tmp_path)
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)  # (as if the files were another user's)
    assert keystore.load(path, identity=identity) == share
    assert bytes(identity_mod.load_or_create(tmp_path)) == bytes(made)
