"""The coordinator's Ed25519 identity key: generated into the data dir on first start, then reused.

Without ``KEYSTORE_PASSPHRASE`` this seed is also what the key share at rest (``keyshare.bin``, consensus/
keystore.py) is encrypted with, so it gets the same protection: mode 0600, checked on every load.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

import nacl.signing

KEY_FILE = "identity.key"


class KeyFileError(ValueError):
    """A key file cannot be used: not a 32-byte Ed25519 seed, readable by group or others, or (the subclass
    consensus.keystore.KeystoreError) a key share that does not open. The process entry (node/process.py)
    turns it into one line on stderr and exit code 2."""


def check_private(path: Path, st: os.stat_result | None = None) -> None:
    """KeyFileError unless only the owner may read or write ``path`` (no group or other permission bits). Its owner
    is not checked: root provisions keys for the service user it then hands them to (deploy/compose.yaml's init, run
    again at every ``up``), and NFS with root_squash makes them nobody's (an owner check broke both: a review)."""
    mode = (st or path.stat()).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: permissions {stat.S_IMODE(mode):o} are too open: it holds a secret key "
                           f"(run chmod 600 {path})")


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically and durably, readable by its owner only (0600): a temporary file of
    a random name (created anew, never through a symbolic link), fsync, rename (``exclusive``: a hard link that
    fails with FileExistsError if ``path`` exists, so two writers cannot both create it; on a file system without
    hard links, an exclusive create of ``path`` itself), fsync of the directory."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")  # (by pid: two first starts in containers,
    #                                                                    both pid 1, shared one and wrote 16 bytes)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not exclusive:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError:
                raise
            except OSError:  # no hard links here (vfat, some network file systems)
                _create_exclusive(path, data)
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _create_exclusive(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data``: ``os.write`` may write fewer (a nearly full disk), and a short file was renamed
    into place as if whole (a truncated key share or DKG journal: a reviewer's reproduction). A write that
    makes no progress raises OSError (ENOSPC)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no space left to write the file")
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    """Make a rename or an unlink in ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_or_create(data_dir: Path) -> nacl.signing.SigningKey:
    """Read ``<data_dir>/identity.key`` (32-byte seed, mode 0600 or stricter), creating it (mode 0600) if missing."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # (created 755: readable by every local user)
    path = data_dir / KEY_FILE
    key = _load(path)
    if key is not None:
        return key
    key = nacl.signing.SigningKey.generate()
    try:  # (a leftover identity.tmp of mode 0644 made a key file of mode 0644, refused at the next start; a
        #    symbolic link there had the seed written wherever it pointed; two first starts made two keys)
        write_private(path, bytes(key), exclusive=True)
    except FileExistsError:  # another process created it meanwhile: that one is the identity
        key = _load(path)
        if key is None:
            raise KeyFileError(f"{path}: appeared and vanished while this process created it") from None
    return key


def _load(path: Path) -> nacl.signing.SigningKey | None:
    """The identity key at ``path``, or None when nothing is there; KeyFileError for anything else than a private
    regular file of 32 bytes (a dangling symbolic link counted as missing, and creating the key beside it recursed
    until RecursionError: a reviewer's reproduction)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the identity key: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        try:
            st = path.stat()
        except OSError as exc:
            raise KeyFileError(f"{path}: a symbolic link to nothing readable ({exc.strerror or exc}); remove it "
                               f"or point it at the key") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: not a regular file")
    check_private(path, st)
    try:
        seed = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the identity key: {exc.strerror or exc}") from None
    if len(seed) != 32:
        raise KeyFileError(f"{path}: expected a 32-byte Ed25519 seed, found {len(seed)} bytes")
    return nacl.signing.SigningKey(seed)
