"""Keys and exposure at start-up, in real ``dsdn-coordinator`` processes: a group/world-readable identity.key
or a key share that does not open ends the process with one line and exit code 2 (not a traceback); a
coordinator with peers and no KEYSTORE_PASSPHRASE says, once, that its key share is encrypted with a key
derived from identity.key; HTTP on a non-loopback address without COORDINATOR_API_TOKEN is refused unless
ALLOW_UNAUTHENTICATED=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nacl.signing
import pytest

from consensus import frost, keystore
from node import identity
from node.identity import KeyFileError
from tests.proc import CoordinatorProcess, free_port

WARNING = "KEYSTORE_PASSPHRASE is not set"


def member_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """c0 of a two-member cluster (c1 never comes up, so no DKG starts); its identity key made beforehand."""
    data = tmp_path / "c0"
    me = bytes(identity.load_or_create(data).verify_key).hex()
    other = bytes(nacl.signing.SigningKey.generate().verify_key).hex()
    return {"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "COORDINATOR_DATA_DIR": str(data),
            "MOCK_DA_PATH": ":memory:", "COORDINATOR_PORT": str(free_port()), "DKG_AUTO": "false",
            "CLUSTER_PEERS": f"c0={me}@127.0.0.1:{free_port()},c1={other}@127.0.0.1:{free_port()}", **extra}


def run_to_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run to its exit; LOG_LEVEL=CRITICAL leaves stderr to what the process prints when it cannot start."""
    return subprocess.run([sys.executable, "-m", "deploy.coordinator"],
                          env={**os.environ, "LOG_LEVEL": "CRITICAL", **env}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def launch(tmp_path: Path, env: dict[str, str]) -> CoordinatorProcess:
    env = dict(env)
    port = int(env.pop("COORDINATOR_PORT"))
    return CoordinatorProcess(tmp_path / "c0", tmp_path / "c0.log", port=port, **env).start()


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("dsdn-coordinator: ") and all(n in lines[0] for n in needles), lines[0]
    return lines[0]


# ---- identity.key ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666, 0o700 | 0o040])
def test_an_identity_key_readable_by_others_is_refused_on_load(tmp_path: Path, mode: int) -> None:
    key = identity.load_or_create(tmp_path)
    path = tmp_path / identity.KEY_FILE
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"permissions {mode:o} are too open"):
        identity.load_or_create(tmp_path)
    path.chmod(0o600)
    assert bytes(identity.load_or_create(tmp_path)) == bytes(key)
    path.chmod(0o400)  # read-only for the owner is fine
    assert bytes(identity.load_or_create(tmp_path)) == bytes(key)


def test_a_group_readable_identity_key_stops_the_coordinator_with_exit_2(tmp_path: Path) -> None:
    env = member_env(tmp_path)
    (tmp_path / "c0" / identity.KEY_FILE).chmod(0o644)
    line = assert_one_line_exit_2(run_to_exit(env), "identity.key", "permissions 644 are too open", "chmod 600")
    assert str(tmp_path / "c0" / identity.KEY_FILE) in line
    env.pop("CLUSTER_PEERS")  # a coordinator without peers loads the same key: the same answer
    assert_one_line_exit_2(run_to_exit(env), "permissions 644 are too open")


# ---- keyshare.bin ----------------------------------------------------------------------------------

def _stored_share(data: Path) -> Path:
    path = data / "keyshare.bin"
    keystore.save(path, frost.trusted_dealer_key_shares(2, 2)[1], identity=identity.load_or_create(data))
    return path


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1
    path.write_bytes(bytes(raw))


DAMAGE = {"garbage": "not a key store", "truncated": "truncated key store", "flipped": "cannot decrypt",
          "empty": "truncated key store", "too open": "permissions 644 are too open", "a folder": "cannot read"}


def _damage(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(os.urandom(300))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:20])
    elif how == "flipped":
        _flip(path, path.stat().st_size - 5)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "too open":
        path.chmod(0o644)
    else:
        path.unlink()
        path.mkdir(mode=0o700)


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_every_unusable_key_share_is_a_key_file_error_with_a_one_line_message(tmp_path: Path, how: str) -> None:
    path = _stored_share(tmp_path)
    _damage(path, how)
    with pytest.raises(KeyFileError) as err:  # what node/process.py turns into exit code 2
        keystore.load(path, identity=identity.load_or_create(tmp_path))
    assert isinstance(err.value, keystore.KeystoreError) and DAMAGE[how] in str(err.value)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("how", ["garbage", "flipped"])
def test_a_corrupt_key_share_stops_the_coordinator_with_one_line_and_exit_2(tmp_path: Path, how: str) -> None:
    env = member_env(tmp_path)
    path = _stored_share(tmp_path / "c0")
    _damage(path, how)
    line = assert_one_line_exit_2(run_to_exit(env), DAMAGE[how])
    assert str(path) in line


# ---- the passphrase warning ------------------------------------------------------------------------

async def test_a_member_without_a_passphrase_warns_once_at_start(tmp_path: Path) -> None:
    env = member_env(tmp_path)
    c = launch(tmp_path, env)
    try:
        await c.wait_ready()
    finally:
        c.stop_now()
    lines = [line for line in c.log().splitlines() if WARNING in line]
    assert len(lines) == 1, c.log()
    assert " WARNING " in lines[0] and str(tmp_path / "c0" / "keyshare.bin") in lines[0]
    assert str(tmp_path / "c0" / "identity.key") in lines[0]


@pytest.mark.parametrize("case", ["passphrase", "no peers"])
async def test_no_warning_with_a_passphrase_or_without_peers(tmp_path: Path, case: str) -> None:
    env = member_env(tmp_path, KEYSTORE_PASSPHRASE="correct horse") if case == "passphrase" else {
        k: v for k, v in member_env(tmp_path).items() if k != "CLUSTER_PEERS"}
    c = launch(tmp_path, env)
    try:
        await c.wait_ready()
    finally:
        c.stop_now()
    assert WARNING not in c.log() and "listening on" in c.log()


def test_the_warning_names_both_files() -> None:
    text = keystore.at_rest_warning(Path("/data/c0/keyshare.bin"))
    assert "\n" not in text and "/data/c0/keyshare.bin" in text and "/data/c0/identity.key" in text


# ---- HTTP exposure ---------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_non_loopback_bind_without_a_token_does_not_start(tmp_path: Path, host: str) -> None:
    result = run_to_exit({"USE_MOCK_DA": "true", "COORDINATOR_HOST": host, "COORDINATOR_DATA_DIR": str(tmp_path),
                          "COORDINATOR_PORT": str(free_port()), "LOG_LEVEL": "INFO"})
    line = assert_one_line_exit_2(result, "configuration error: COORDINATOR_API_TOKEN=unset",
                                  f"COORDINATOR_HOST={host}", "ALLOW_UNAUTHENTICATED=true")
    assert "/cluster/dkg" in line
    assert not (tmp_path / identity.KEY_FILE).exists()  # refused before anything was created


def test_the_identity_key_is_written_0600_never_through_a_link_and_never_twice(tmp_path: Path) -> None:
    """A leftover temporary file of mode 0644 made the key file 0644 (refused at the next start); a symbolic link
    in its place had the seed written wherever it pointed; two first starts could each write a key (a reviewer's
    runs). Now: a temporary file of a random name, created anew, then a hard link that refuses an existing key."""
    victim = tmp_path / "elsewhere"
    victim.write_bytes(b"")
    data = tmp_path / "data"
    data.mkdir()
    leftover = data / "identity.tmp"  # the name a crashed first start of an earlier build left behind
    leftover.symlink_to(victim)
    key = identity.load_or_create(data)
    assert victim.read_bytes() == b""
    leftover.unlink()
    path = data / identity.KEY_FILE
    assert (path.stat().st_mode & 0o777) == 0o600 and path.read_bytes() == bytes(key)
    assert identity.load_or_create(data).verify_key == key.verify_key
    with pytest.raises(FileExistsError):  # a second creator loses and reads the first one's key
        identity.write_private(path, b"x" * 32, exclusive=True)
    assert path.read_bytes() == bytes(key) and list(data.iterdir()) == [path]


def test_the_identity_key_is_created_exclusively_where_there_are_no_hard_links(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise PermissionError("hard links are not supported here")

    monkeypatch.setattr(os, "link", no_links)
    key = identity.load_or_create(tmp_path)
    path = tmp_path / identity.KEY_FILE
    assert path.read_bytes() == bytes(key) and (path.stat().st_mode & 0o777) == 0o600
    assert list(tmp_path.iterdir()) == [path]
    with pytest.raises(FileExistsError):
        identity.write_private(path, b"y" * 32, exclusive=True)
    assert path.read_bytes() == bytes(key) and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("what", ["dangling link", "directory", "link to a directory"])
def test_something_else_than_a_key_file_in_its_place_is_a_key_file_error(tmp_path: Path, what: str) -> None:
    """A dangling symbolic link counted as no key: the key made beside it found the name taken, and the retry
    recursed until RecursionError (a reviewer's reproduction). Whatever is there and is no key file: one clear
    KeyFileError, and nothing written."""
    data = tmp_path / "data"
    data.mkdir()
    path = data / identity.KEY_FILE
    if what == "dangling link":
        path.symlink_to(tmp_path / "gone")
    elif what == "directory":
        path.mkdir(mode=0o700)
    else:
        (tmp_path / "dir").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "dir")
    with pytest.raises(KeyFileError, match=r"symbolic link to nothing|not a regular file"):
        identity.load_or_create(data)
    assert sorted(p.name for p in data.iterdir()) == [identity.KEY_FILE]
