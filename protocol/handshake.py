"""The authenticated handshake and the sealed channel after it (pure: no I/O, like h11).

1. Each side sends ``hello`` = msgpack ``{v, cluster, id, identity, ephemeral, nonce}`` (identity: its
   Ed25519 public key; ephemeral: a fresh X25519 public key; nonce: 32 random bytes).
2. On the peer's hello: refuse an unsupported version, another cluster, an id that is not a member, or
   a key that is not that member's; otherwise sign the transcript
   ``SHA-512("dsdn-peer-v1" | cluster | dialer's hello | listener's hello)`` with the identity key and
   send ``auth`` = ``{sig}``.
3. On the peer's auth: verify its signature; derive per-direction keys with ``crypto_kx`` on the
   ephemeral keys (the dialer is the kx client), each bound to the transcript with keyed BLAKE2b.

Every later frame is XChaCha20-Poly1305 with an implicit counter nonce (0, 1, 2, ... per direction), so
a replayed, reordered, dropped or tampered frame fails to open and the link must close.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

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
    def __init__(self, *, dialer: bool, my_id: str, identity: nacl.signing.SigningKey, cluster: str,
                 members: dict[str, bytes], expect: str | None = None) -> None:
        """``members``: id -> Ed25519 public key of every cluster member; ``expect``: the peer we dialed."""
        self.dialer, self.my_id, self.identity, self.cluster = dialer, my_id, identity, cluster
        self.members, self.expect = members, expect
        self._eph_pk, self._eph_sk = sodium.crypto_kx_keypair()
        self._hello = msgpack.packb({"v": VERSION, "cluster": cluster, "id": my_id,
                                     "identity": bytes(identity.verify_key), "ephemeral": self._eph_pk,
                                     "nonce": os.urandom(32)}, use_bin_type=True)
        self.peer: Peer | None = None
        self._peer_eph = b""
        self._transcript = b""

    def hello(self) -> bytes:
        return self._hello

    def receive_hello(self, frame: bytes) -> bytes:
        """Check the peer's hello; return our ``auth`` frame."""
        if len(frame) > MAX_HANDSHAKE_FRAME:
            raise HandshakeRefused(CLOSE_PROTOCOL, "hello too large")
        try:
            obj = msgpack.unpackb(frame, raw=False, max_str_len=256, max_bin_len=64, max_array_len=0, max_map_len=8)
        except Exception:  # msgpack raises many unrelated types for garbage
            raise HandshakeRefused(CLOSE_PROTOCOL, "hello is not valid msgpack") from None
        if type(obj) is not dict or obj.keys() != {"v", "cluster", "id", "identity", "ephemeral", "nonce"}:
            raise HandshakeRefused(CLOSE_PROTOCOL, "malformed hello")
        if obj["v"] != VERSION:
            raise HandshakeRefused(CLOSE_BAD_VERSION, f"unsupported protocol version {obj['v']!r} (we speak {VERSION})")
        if obj["cluster"] != self.cluster:
            raise HandshakeRefused(CLOSE_WRONG_CLUSTER, f"wrong cluster id {obj['cluster']!r}")
        peer_id, key = obj["id"], obj["identity"]
        if type(peer_id) is not str or self.members.get(peer_id) != key or peer_id == self.my_id:
            raise HandshakeRefused(CLOSE_UNKNOWN_PEER, f"identity {peer_id!r} is not a member with that key")
        if self.expect is not None and peer_id != self.expect:
            raise HandshakeRefused(CLOSE_UNKNOWN_PEER, f"dialed {self.expect!r} but {peer_id!r} answered")
        if type(obj["ephemeral"]) is not bytes or len(obj["ephemeral"]) != 32 or type(obj["nonce"]) is not bytes:
            raise HandshakeRefused(CLOSE_PROTOCOL, "malformed hello keys")
        self.peer, self._peer_eph = Peer(peer_id, key), obj["ephemeral"]
        first, second = (self._hello, frame) if self.dialer else (frame, self._hello)
        self._transcript = hashlib.sha512(PROTOCOL + self.cluster.encode() + first + second).digest()
        return msgpack.packb({"sig": self.identity.sign(self._transcript).signature}, use_bin_type=True)

    def receive_auth(self, frame: bytes) -> Session:
        """Check the peer's transcript signature; return the session."""
        assert self.peer is not None, "receive_hello first"
        try:
            if len(frame) > MAX_HANDSHAKE_FRAME:
                raise ValueError("auth too large")
            obj = msgpack.unpackb(frame, raw=False, max_bin_len=64, max_str_len=8, max_array_len=0, max_map_len=1)
            sig = obj["sig"]
            nacl.signing.VerifyKey(self.peer.public_key).verify(self._transcript, sig)
        except Exception:  # malformed, or nacl.exceptions.BadSignatureError
            raise HandshakeRefused(CLOSE_BAD_AUTH, f"{self.peer.id}: bad transcript signature") from None
        if self.dialer:
            rx, tx = sodium.crypto_kx_client_session_keys(self._eph_pk, self._eph_sk, self._peer_eph)
        else:
            rx, tx = sodium.crypto_kx_server_session_keys(self._eph_pk, self._eph_sk, self._peer_eph)
        bind = self._transcript[:32]
        return Session(hashlib.blake2b(tx, key=bind, digest_size=32).digest(),
                       hashlib.blake2b(rx, key=bind, digest_size=32).digest(), self.peer)
