"""The secret signing nonces a signer has offered to proposers (their commitments sent out), each used at most once.
Pure; no I/O.

Bounded three ways, so no peer can push out the nonces offered to the others: at most ``max_spares`` spares per
peer (a spare is offered for any one later batch of that peer; a new one replaces the peer's oldest), at most
``max_per_peer`` nonces per peer (its oldest go first), and ``max_total`` in all (the oldest go first). Before the
per-peer bounds, one member sending thousands of lock requests asking for spares filled the table and pushed out
every nonce offered to the honest proposers: their sign requests were refused as "unknown or already used
commitment" (a reviewer's reproduction).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

Commitment = tuple[bytes, bytes]


@dataclass
class Nonce:
    nonces: tuple[bytes, bytes]
    peer: str
    batch: bytes | None  # None: a spare, offered to ``peer`` for any one later batch
    made: float = 0.0  # when it was offered (the caller's clock)


class NonceTable:
    def __init__(self, max_total: int, max_per_peer: int, max_spares: int) -> None:
        self.max_total, self.max_per_peer, self.max_spares = max_total, max_per_peer, max_spares
        self._all: OrderedDict[Commitment, Nonce] = OrderedDict()  # oldest first
        self._of_peer: dict[str, OrderedDict[Commitment, None]] = {}  # the same, per peer
        self._spares_of: dict[str, OrderedDict[Commitment, None]] = {}  # a peer's spares, oldest first

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, commitment: object) -> bool:
        return commitment in self._all

    def get(self, commitment: Commitment) -> Nonce | None:
        return self._all.get(commitment)

    def add(self, commitment: Commitment, nonce: Nonce) -> None:
        """Hold ``nonce``, offered under ``commitment``; then enforce the bounds (see the module docstring)."""
        self.pop(commitment)
        self._all[commitment] = nonce
        self._of_peer.setdefault(nonce.peer, OrderedDict())[commitment] = None
        if nonce.batch is None:
            spares = self._spares_of.setdefault(nonce.peer, OrderedDict())
            spares[commitment] = None
            while len(spares) > self.max_spares:
                self.pop(next(iter(spares)))
        mine = self._of_peer[nonce.peer]
        while len(mine) > self.max_per_peer:  # the peer's oldest nonce bound to a batch goes first: its spares
            spares = self._spares_of.get(nonce.peer, {})  # are few (max_spares), and its next batch may need one
            self.pop(next((c for c in mine if c not in spares), next(iter(mine))))
        while len(self._all) > self.max_total:
            self.pop(next(iter(self._all)))

    __setitem__ = add

    def pop(self, commitment: Commitment) -> Nonce | None:
        """Forget the nonce of ``commitment`` and return it (None if not held): used once, or let go."""
        nonce = self._all.pop(commitment, None)
        if nonce is None:
            return None
        mine = self._of_peer[nonce.peer]
        del mine[commitment]
        if not mine:
            del self._of_peer[nonce.peer]
        if nonce.batch is None:
            spares = self._spares_of[nonce.peer]
            del spares[commitment]
            if not spares:
                del self._spares_of[nonce.peer]
        return nonce

    def drop_stale(self, stale_before: float, scan: int | None) -> None:
        """Forget nonces offered for a batch before ``stale_before`` (its deadline passed): all of them among the
        oldest, then those among the next ``scan`` (all if None). Spares stay (a peer may use one any time)."""
        while self._all:
            commitment, oldest = next(iter(self._all.items()))
            if oldest.batch is None or oldest.made >= stale_before:
                break
            self.pop(commitment)
        for commitment in [c for c, n in itertools.islice(self._all.items(), scan)
                           if n.batch is not None and n.made < stale_before]:
            self.pop(commitment)
