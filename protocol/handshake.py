"""The authenticated handshake and the sealed channel after it (pure: no I/O, like h11).

The dialer proves it belongs to the cluster before the listener says anything about itself:

1. dialer -> ``hello`` = msgpack ``{v, cluster, id, identity, ephemeral, nonce}`` (identity: its Ed25519
   public key; ephemeral: a fresh X25519 public key; nonce: 32 random bytes).
2. listener: refuse an unsupported version, another cluster, an id that is not a member, a key that is
   not that member's, or an ephemeral key that gives no shared secret (all-zero or low order: libsodium
   refuses it); otherwise -> ``challenge`` = ``{ephemeral, nonce}``: fresh random values only, nothing
   that names or identifies the listener.
3. dialer -> ``auth`` = ``{sig}``: its identity key's signature of ``"dialer" | T``, where
   ``T = SHA-512("dsdn-peer-v1", cluster, listener's public key, hello, challenge)`` (each part length
   prefixed; the dialer takes the listener's key from the member list, so a signature made for one member
   is useless at another).
4. listener: verify it -> ``welcome`` = ``{id, identity, sig}``: its own signature of ``"listener" | T``;
   the dialer checks that the member it dialed answered.

Session keys: ``crypto_kx`` on the ephemeral keys (the dialer is the kx client), each direction's key
bound to ``T`` with keyed BLAKE2b. Every later frame is XChaCha20-Poly1305 with an implicit counter nonce
(0, 1, 2, ... per direction), so a replayed, reordered, dropped or tampered frame fails to open and the
link must close. Every method raises ``HandshakeRefused`` (a close code and a reason) for anything a
remote sends that it cannot accept, and nothing else.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing

PROTOCOL = b"dsdn-peer-v1"
VERSION = 1
MAX_HANDSHAKE_FRAME = 1024

# WebSocket close codes (4000-4999 are for applications) with what they mean.
CLOSE_UNKNOWN_PEER = 4001
CLOSE_WRONG_CLUSTER = 4002
CLOSE_BAD_VERSION = 4003
CLOSE_BAD_AUTH = 4004
CLOSE_PROTOCOL = 4005
CLOSE_REPLACED = 4006

_HELLO_KEYS = frozenset({"v", "cluster", "id", "identity", "ephemeral", "nonce"})
_CHALLENGE_KEYS = frozenset({"ephemeral", "nonce"})
_AUTH_KEYS = frozenset({"sig"})
_WELCOME_KEYS = frozenset({"id", "identity", "sig"})


class HandshakeRefused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class ChannelBroken(Exception):
    """A frame failed to open: replayed, reordered, dropped or tampered."""


@dataclass(frozen=True)
class Peer:
    id: str
    public_key: bytes


class Session:
    """One direction-keyed AEAD channel with counter nonces."""

    def __init__(self, tx_key: bytes, rx_key: bytes, peer: Peer) -> None:
        self._tx_key, self._rx_key, self.peer = tx_key, rx_key, peer
        self._tx = 0
        self._rx = 0

    def seal(self, plaintext: bytes) -> bytes:
        nonce = self._tx.to_bytes(24, "big")
        self._tx += 1
        return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, None, nonce, self._tx_key)

    def open(self, frame: bytes) -> bytes:
        nonce = self._rx.to_bytes(24, "big")
        try:
            plaintext = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(frame, None, nonce, self._rx_key)
        except (nacl.exceptions.CryptoError, TypeError, ValueError):
            raise ChannelBroken(f"frame {self._rx} from {self.peer.id} failed authentication") from None
        self._rx += 1
        return plaintext


class Handshake:
    """One side of one handshake. Dialer: ``hello()``, ``receive_challenge()``, ``receive_welcome()``.
    Listener: ``receive_hello()``, ``receive_auth()``. Each step may be taken once, in that order."""

    def __init__(self, *, dialer: bool, my_id: str, identity: nacl.signing.SigningKey, cluster: str,
                 members: dict[str, bytes], expect: str | None = None) -> None:
        """``members``: id -> Ed25519 public key of every cluster member; ``expect``: the peer we dialed
        (required when dialing)."""
        if dialer and (expect is None or expect not in members):
            raise ValueError("a dialer must name the member it dials")
        self.dialer, self.my_id, self.identity, self.cluster = dialer, my_id, identity, cluster
        self.members, self.expect = members, expect
        self._eph_pk, self._eph_sk = sodium.crypto_kx_keypair()
        self._nonce = os.urandom(32)
        self.peer: Peer | None = None
        self._step = 0
        self._hello = b""
        self._transcript = b""
        self._keys: tuple[bytes, bytes] = (b"", b"")  # (tx, rx), bound to the transcript

    # ---- dialer -------------------------------------------------------------------------------------

    def hello(self) -> bytes:
        self._expect_step(dialer=True, step=0)
        self._step = 1
        self._hello = msgpack.packb({"v": VERSION, "cluster": self.cluster, "id": self.my_id,
                                     "identity": bytes(self.identity.verify_key), "ephemeral": self._eph_pk,
                                     "nonce": self._nonce}, use_bin_type=True)
        return self._hello

    def receive_challenge(self, frame: bytes) -> bytes:
        """Check the listener's challenge; return our ``auth`` frame."""
        self._expect_step(dialer=True, step=1)
        self._step = 2
        obj = _unpack(frame, _CHALLENGE_KEYS, "challenge")
        if not _is_bytes(obj["ephemeral"], 32) or not _is_bytes(obj["nonce"], 32):
            raise HandshakeRefused(CLOSE_PROTOCOL, "malformed challenge")
        assert self.expect is not None
        self._derive(self.members[self.expect], frame, obj["ephemeral"])
        return msgpack.packb({"sig": self.identity.sign(b"dialer" + self._transcript).signature},
                             use_bin_type=True)

    def receive_welcome(self, frame: bytes) -> Session:
        """Check that the member we dialed answered and signed the transcript; return the session."""
        self._expect_step(dialer=True, step=2)
        self._step = 3
        obj = _unpack(frame, _WELCOME_KEYS, "welcome")
        assert self.expect is not None
        if obj["id"] != self.expect or obj["identity"] != self.members[self.expect]:
            raise HandshakeRefused(CLOSE_UNKNOWN_PEER, f"dialed {self.expect!r} but {obj['id']!r} answered")
        self.peer = Peer(self.expect, self.members[self.expect])
        self._verify(obj["sig"], b"listener", "welcome")
        return Session(*self._keys, self.peer)

    # ---- listener -----------------------------------------------------------------------------------

    def receive_hello(self, frame: bytes) -> bytes:
        """Check the dialer's hello; return our ``challenge`` frame (which reveals nothing about us)."""
        self._expect_step(dialer=False, step=0)
        self._step = 1
        obj = _unpack(frame, _HELLO_KEYS, "hello", max_str_len=256)
        if type(obj["v"]) is not int or obj["v"] != VERSION:  # (true and 1.0 passed for 1)
            raise HandshakeRefused(CLOSE_BAD_VERSION, f"unsupported protocol version {obj['v']!r} (we speak {VERSION})")
        if obj["cluster"] != self.cluster:
            raise HandshakeRefused(CLOSE_WRONG_CLUSTER, f"wrong cluster id {obj['cluster']!r}")
        peer_id, key = obj["id"], obj["identity"]
        # (in the members first: an unknown id with a nil identity passed, None == None, and was challenged, holding
        # a slot for the handshake's time; a reviewer's reproduction)
        if type(peer_id) is not str or peer_id not in self.members or self.members[peer_id] != key \
                or peer_id == self.my_id:
            raise HandshakeRefused(CLOSE_UNKNOWN_PEER, f"identity {peer_id!r} is not a member with that key")
        if not _is_bytes(obj["ephemeral"], 32) or not _is_bytes(obj["nonce"], 32):
            raise HandshakeRefused(CLOSE_PROTOCOL, "malformed hello keys")
        self.peer, self._hello = Peer(peer_id, key), frame
        challenge = msgpack.packb({"ephemeral": self._eph_pk, "nonce": self._nonce}, use_bin_type=True)
        self._derive(bytes(self.identity.verify_key), challenge, obj["ephemeral"])
        return challenge

    def receive_auth(self, frame: bytes) -> tuple[bytes, Session]:
        """Check the dialer's transcript signature; return our ``welcome`` frame and the session."""
        self._expect_step(dialer=False, step=1)
        self._step = 2
        assert self.peer is not None
        obj = _unpack(frame, _AUTH_KEYS, "auth")
        self._verify(obj["sig"], b"dialer", "auth")
        welcome = msgpack.packb({"id": self.my_id, "identity": bytes(self.identity.verify_key),
                                 "sig": self.identity.sign(b"listener" + self._transcript).signature},
                                use_bin_type=True)
        return welcome, Session(*self._keys, self.peer)

    # ---- shared ---------------------------------------------------------------------------------------

    def _expect_step(self, *, dialer: bool, step: int) -> None:
        if self.dialer is not dialer or self._step != step:
            raise RuntimeError("handshake steps taken out of order")

    def _derive(self, listener_key: bytes, challenge: bytes, peer_eph: bytes) -> None:
        """The transcript and the session keys; refuses an ephemeral key that gives no shared secret."""
        h = hashlib.sha512()
        for part in (PROTOCOL, self.cluster.encode(), listener_key, self._hello, challenge):
            h.update(struct.pack(">I", len(part)) + part)
        self._transcript = h.digest()
        try:
            if self.dialer:
                rx, tx = sodium.crypto_kx_client_session_keys(self._eph_pk, self._eph_sk, peer_eph)
            else:
                rx, tx = sodium.crypto_kx_server_session_keys(self._eph_pk, self._eph_sk, peer_eph)
        except (nacl.exceptions.CryptoError, TypeError, ValueError):
            # libsodium refuses an all-zero shared secret: a zero or low-order ephemeral key
            raise HandshakeRefused(CLOSE_PROTOCOL, "unusable ephemeral key") from None
        bind = self._transcript[:32]
        self._keys = (hashlib.blake2b(tx, key=bind, digest_size=32).digest(),
                      hashlib.blake2b(rx, key=bind, digest_size=32).digest())

    def _verify(self, sig: Any, role: bytes, what: str) -> None:
        assert self.peer is not None
        try:
            nacl.signing.VerifyKey(self.peer.public_key).verify(role + self._transcript, sig)
        except Exception:  # not bytes, wrong length, or nacl.exceptions.BadSignatureError
            raise HandshakeRefused(CLOSE_BAD_AUTH, f"{self.peer.id}: bad transcript signature in {what}") from None


def _unpack(frame: bytes, keys: frozenset[str], what: str, max_str_len: int = 128) -> dict[str, Any]:
    if type(frame) is not bytes or len(frame) > MAX_HANDSHAKE_FRAME:
        raise HandshakeRefused(CLOSE_PROTOCOL, f"{what} is not a binary frame of at most {MAX_HANDSHAKE_FRAME} bytes")
    try:
        obj = msgpack.unpackb(frame, raw=False, max_str_len=max_str_len, max_bin_len=64, max_array_len=0,
                              max_map_len=len(keys), max_ext_len=0)
    except Exception:  # msgpack raises many unrelated types for garbage
        raise HandshakeRefused(CLOSE_PROTOCOL, f"{what} is not valid msgpack") from None
    if type(obj) is not dict or obj.keys() != keys:
        raise HandshakeRefused(CLOSE_PROTOCOL, f"malformed {what}")
    return obj


def _is_bytes(value: Any, size: int) -> bool:
    return type(value) is bytes and len(value) == size
