"""QuorumDA, the secondary DA layer: a blob is stored when enough validators (blob-store services,
deploy/blobstore.py) have durably stored it and returned a valid Ed25519 signature over
``signed_message(namespace, sha256(data))`` within the signature timeout.

Threshold: ``required_signatures(n, threshold_percent)`` — the fewest valid signatures whose share of n,
rounded to a whole percent, is at least QUORUM_THRESHOLD. So 67 means two thirds (2 of 3, 4 of 6, 67 of 100)
and 100 means all; a strict ``ceil(0.67 × 3)`` would demand 3 of 3 and make the default tolerate no fault.
Signatures count once per distinct validator key (two URLs of one store are one vote).

post: sent to every validator at once in one nursery; it returns as soon as the threshold is met and
cancels the posts still in flight (no stray tasks; a request already on the wire may still be stored by
that validator), or fails once the threshold can no longer be met or the signature timeout passed. Below
threshold → DAUnavailable naming valid/needed and each validator's reason (BlobRejected when every
validator refused the blob itself). The certificate (hash, namespace, signatures with keys and positions) is
kept in memory, bounded (``MAX_CERTIFICATES``, oldest dropped), and returned by ``certificate(ref)``.

Refs: BlobRef("secondary", position, sha256(data)), the position being the followed validator's
(``follow_index``) if it signed, else the first signer's. ``get`` needs only the commitment: it asks the
signers known from the certificate first, then every other validator, checking the hash; BlobNotFound only
when every validator answered "not found".

Following: one int cursor cannot track n logs, and no single validator is guaranteed to hold every
quorum blob (it may have been down or cancelled). ``read_after``/``head`` follow ONE validator's log
(``follow_index``, refs renamed to this layer) for convenience; a complete follower should follow every
``validators()`` entry (a BlobStoreDA each, own cursor) and de-duplicate by commitment — every quorum blob
is on at least ``required`` of them. ``probe(timeout_s)``, the health check, is ``head`` within its own
deadline that is done as soon as ``required`` validators answered (a stopped validator does not fail it).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack
import nacl.signing
import trio

from node.da.base import BlobNotFound, BlobRef, DAError, DATimeout, DAUnavailable, Page
from node.da.blobstore_client import (
    DEFAULT_NAMESPACE,
    BlobRejected,
    BlobStoreDA,
    Receipt,
    VerificationFailed,
    verify_signature,
)

MAX_CERTIFICATES = 10_000


def required_signatures(n: int, threshold_percent: int) -> int:
    """Fewest k of n with round_half_up(100·k/n) ≥ threshold_percent, i.e. 200·k ≥ (2·threshold − 1)·n."""
    if n < 1 or not 1 <= threshold_percent <= 100:
        raise ValueError("need at least one validator and a threshold from 1 to 100")
    if threshold_percent == 100:  # all, whatever n (199 of 200 would round to 100%)
        return n
    return max(1, -(-(2 * threshold_percent - 1) * n // 200))


@dataclass(frozen=True, slots=True)
class ValidatorSignature:
    url: str
    public_key: bytes
    signature: bytes
    position: int


@dataclass(frozen=True, slots=True)
class QuorumCertificate:
    namespace: bytes
    blob_hash: bytes
    signatures: tuple[ValidatorSignature, ...]
    required: int
    validators: int

    def valid_signers(self, keys: Sequence[bytes]) -> set[bytes]:
        """The distinct keys among ``keys`` whose signature in this certificate verifies."""
        wanted = set(keys)
        return {s.public_key for s in self.signatures if s.public_key in wanted
                and verify_signature(s.public_key, self.namespace, self.blob_hash, s.signature)}

    def verify(self, keys: Sequence[bytes], required: int) -> bool:
        """At least ``required`` of ``keys`` signed: the verifier's own threshold, never the one the certificate
        states (a certificate saying it needs none would pass with no signature)."""
        return len(self.valid_signers(keys)) >= max(1, required)

    def to_bytes(self) -> bytes:
        """msgpack, to keep the certificate with the fallback record of its blob."""
        return msgpack.packb({"namespace": self.namespace, "hash": self.blob_hash, "required": self.required,
                              "validators": self.validators,
                              "signatures": [[s.url, s.public_key, s.signature, s.position] for s in self.signatures]},
                             use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> QuorumCertificate:
        """The certificate ``to_bytes`` wrote; ValueError for anything else."""
        try:
            obj = msgpack.unpackb(data, raw=False)
            cert = cls(obj["namespace"], obj["hash"], tuple(ValidatorSignature(*s) for s in obj["signatures"]),
                       obj["required"], obj["validators"])
        except Exception as exc:  # msgpack and a wrong shape raise many unrelated types
            raise ValueError(f"not a quorum certificate: {type(exc).__name__}: {exc}") from None
        # the fields' types too: a public key given as a list made verify() raise TypeError (a reviewer's find)
        if not (type(cert.namespace) is bytes and type(cert.blob_hash) is bytes and type(cert.required) is int
                and type(cert.validators) is int
                and all(type(s.url) is str and type(s.public_key) is bytes and type(s.signature) is bytes
                        and type(s.position) is int for s in cert.signatures)):
            raise ValueError("not a quorum certificate: a field of the wrong type")
        return cert


@dataclass
class _Tally:
    needed: int
    total: int
    valid: dict[int, Receipt] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    rejected: int = 0
    decided: trio.Event = field(default_factory=trio.Event)

    def ok(self, index: int, receipt: Receipt) -> None:
        twin = next((i for i, r in self.valid.items() if r.public_key == receipt.public_key), None)
        if twin is not None:
            self.fail(index, f"same key as validator {twin}, counted once")
            return
        self.valid[index] = receipt
        self._check()

    def fail(self, index: int, reason: str, rejected: bool = False) -> None:
        self.failed[index] = reason
        self.rejected += rejected
        self._check()

    def _check(self) -> None:
        pending = self.total - len(self.valid) - len(self.failed)
        if len(self.valid) >= self.needed or len(self.valid) + pending < self.needed:
            self.decided.set()


async def _head_and_key(validator: BlobStoreDA) -> tuple[int, bytes]:
    """A validator's log head and the key it signs with (the pinned one, else the one its /health names)."""
    body = await validator.health()
    return int(body["head"]), validator.public_key or bytes.fromhex(body["public_key"])


def _stores(heads: dict[int, tuple[int, bytes]]) -> int:
    """How many distinct stores answered: validators answering under one key are one store, counted once, as a
    post counts their signatures (two URLs of one store made the health check pass while every post failed, and
    the status machine flapped: a reviewer's reproduction)."""
    return len({key for _, key in heads.values()})


def _answering(heads: dict[int, tuple[int, bytes]], total: int) -> str:
    stores = _stores(heads)
    return f"{len(heads)} of {total} validators answer" + (f" ({stores} distinct stores)" if stores < len(heads)
                                                            else "")


class QuorumDA:
    def __init__(self, urls: Sequence[str], *, threshold_percent: int, signature_timeout_s: float,
                 public_keys: Sequence[bytes | None] | None = None, namespace: bytes = DEFAULT_NAMESPACE,
                 timeout_s: float = 10.0, name: str = "secondary", follow_index: int = 0,
                 signer: nacl.signing.SigningKey | None = None) -> None:
        """``urls``: the validators (QUORUM_VALIDATORS); ``public_keys``: their expected keys in the same
        order (None entries, or no list, pin the key on first use); ``timeout_s`` bounds each get/read call."""
        keys = list(public_keys) if public_keys is not None else [None] * len(urls)
        if len(keys) != len(urls):
            raise ValueError(f"{len(urls)} validator URLs but {len(keys)} public keys")
        given = [k for k in keys if k is not None]
        if len(set(given)) != len(given):
            raise ValueError("two validators have the same public key")
        if signature_timeout_s <= 0:
            raise ValueError("signature_timeout_s must be positive")
        self.required = required_signatures(len(urls), threshold_percent)
        if not 0 <= follow_index < len(urls):
            raise ValueError(f"follow_index must be 0..{len(urls) - 1}")
        self.name = name
        self.namespace = namespace
        self.threshold_percent = threshold_percent
        self.signature_timeout_s = signature_timeout_s
        self.follow_index = follow_index
        self.timeout_s = timeout_s
        self._validators = [
            BlobStoreDA(url, name=f"{name}/{i}", namespace=namespace, public_key=key, timeout_s=timeout_s,
                        signer=signer)
            for i, (url, key) in enumerate(zip(urls, keys, strict=True))
        ]
        self._certificates: OrderedDict[bytes, QuorumCertificate] = OrderedDict()

    def validators(self) -> list[BlobStoreDA]:
        """One BlobStoreDA per validator, in configuration order: follow each with its own cursor."""
        return list(self._validators)

    def certificate(self, ref: BlobRef) -> QuorumCertificate | None:
        """The certificate of a blob posted through this object (in memory; None if unknown or evicted)."""
        return self._certificates.get(ref.commitment)

    async def aclose(self) -> None:
        for v in self._validators:
            await v.aclose()

    # ---- DALayer -----------------------------------------------------------------------------------

    async def post(self, data: bytes) -> BlobRef:
        data = bytes(data)
        blob_hash = hashlib.sha256(data).digest()
        tally = _Tally(self.required, len(self._validators))
        async with trio.open_nursery() as nursery:
            for i, validator in enumerate(self._validators):
                nursery.start_soon(self._ask, i, validator, data, tally)
            with trio.move_on_after(self.signature_timeout_s) as waiting:
                await tally.decided.wait()
            nursery.cancel_scope.cancel()  # threshold met or out of reach: the rest cannot change the outcome
        if len(tally.valid) < self.required:
            raise self._failure(tally, timed_out=waiting.cancelled_caught)
        signers = sorted(tally.valid.items())
        signatures = tuple(ValidatorSignature(self._validators[i].url, r.public_key, r.signature, r.position)
                           for i, r in signers)
        self._remember(QuorumCertificate(self.namespace, blob_hash, signatures, self.required, len(self._validators)))
        followed = tally.valid.get(self.follow_index)
        return BlobRef(self.name, (followed or signers[0][1]).position, blob_hash)

    async def get(self, ref: BlobRef) -> bytes:
        """The blob from the first validator that has it (each answer checked against the hash). Signers first;
        each next validator is asked as soon as the one before failed, or once it has been silent for
        ``timeout_s`` / (validators + 1): one after another, a validator that took the connection and never answered
        held every read its whole timeout, and all of them n times that (a reviewer's reproduction). Each has its
        own ``timeout_s`` (a bound on the whole read cut a slow working one short behind hung ones: a regression
        review), so a read takes under twice that."""
        cert = self._certificates.get(ref.commitment)
        signed = {s.url for s in cert.signatures} if cert else set()
        order = sorted(self._validators, key=lambda v: v.url not in signed)  # stable: signers first
        reasons: list[str] = []
        found: list[bytes] = []
        stagger = self.timeout_s / (len(order) + 1)

        async def fetch(validator: BlobStoreDA, done: trio.Event, scope: trio.CancelScope) -> None:
            try:
                found.append(await validator.fetch(ref.commitment))
                scope.cancel()
            except BlobNotFound:
                reasons.append(f"{validator.url}: not found")
            except Exception as exc:  # (DAError; any other is this validator's failure too, not the read's)
                reasons.append(f"{validator.url}: {exc}")
            finally:
                done.set()

        async with trio.open_nursery() as nursery:
            for validator in order:
                done = trio.Event()
                nursery.start_soon(fetch, validator, done, nursery.cancel_scope)
                with trio.move_on_after(stagger):
                    await done.wait()
                if found:
                    break
        if found:
            return found[0]
        summary = "; ".join(reasons)
        if all(r.endswith(": not found") for r in reasons):
            raise BlobNotFound(f"{self.name}: no validator has blob {ref.commitment.hex()}: {summary}")
        raise DAUnavailable(f"{self.name}: could not read blob {ref.commitment.hex()} from any validator: {summary}")

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        """Follows validator ``follow_index`` only (see the module docstring); a long poll waits on it."""
        page = await self._validators[self.follow_index].read_after(cursor, limit, wait_s)
        return Page([(BlobRef(self.name, ref.height, ref.commitment), data) for ref, data in page.items],
                    page.cursor, page.at_head, page.log)

    async def head(self) -> int:
        """The followed validator's head, but only while enough validators answer to reach the threshold:
        a health check must fail when a post could not succeed."""
        heads: dict[int, tuple[int, bytes]] = {}
        errors: list[str] = []

        async def ask(index: int, validator: BlobStoreDA) -> None:
            try:
                with trio.fail_after(self.signature_timeout_s):
                    heads[index] = await _head_and_key(validator)
            except (DAError, trio.TooSlowError) as exc:
                errors.append(f"{validator.name}: {exc or 'no answer'}")

        async with trio.open_nursery() as nursery:
            for index, validator in enumerate(self._validators):
                nursery.start_soon(ask, index, validator)
        if _stores(heads) < self.required:
            raise DAUnavailable(f"{self.name}: {_answering(heads, len(self._validators))}, {self.required} "
                                f"needed: " + "; ".join(errors))
        return heads[self.follow_index][0] if self.follow_index in heads else max(h for h, _ in heads.values())

    async def probe(self, timeout_s: float) -> int:
        """The health check: like ``head`` within ``timeout_s``, but done as soon as enough validators answered
        (one slow or stopped validator of three does not fail it)."""
        heads: dict[int, tuple[int, bytes]] = {}
        errors: list[str] = []
        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:
                async def ask(index: int, validator: BlobStoreDA) -> None:
                    try:
                        heads[index] = await _head_and_key(validator)
                    except DAError as exc:
                        errors.append(f"{validator.name}: {exc}")
                        return
                    if _stores(heads) >= self.required:
                        nursery.cancel_scope.cancel()

                for index, validator in enumerate(self._validators):
                    nursery.start_soon(ask, index, validator)
        if _stores(heads) < self.required:
            silent = len(self._validators) - len(heads) - len(errors)
            raise DAUnavailable(f"{self.name}: {_answering(heads, len(self._validators))} within "
                                f"{timeout_s:.3g}s, {self.required} needed" + (f"; {silent} silent" if silent else "")
                                + ("; " + "; ".join(errors) if errors else ""))
        return heads[self.follow_index][0] if self.follow_index in heads else max(h for h, _ in heads.values())

    # ---- internals ---------------------------------------------------------------------------------

    async def _ask(self, index: int, validator: BlobStoreDA, data: bytes, tally: _Tally) -> None:
        try:
            receipt = await validator.store(data, timeout_s=self.signature_timeout_s)
        except VerificationFailed as exc:
            tally.fail(index, f"invalid answer: {exc}")
        except DATimeout:
            tally.fail(index, f"no answer within {self.signature_timeout_s:.3g}s")
        except BlobRejected as exc:
            tally.fail(index, f"rejected the blob: {exc}", rejected=True)
        except DAError as exc:
            tally.fail(index, f"unavailable: {exc}")
        else:
            tally.ok(index, receipt)

    def _failure(self, tally: _Tally, timed_out: bool) -> DAError:
        pending = (f"no answer within {self.signature_timeout_s:.3g}s" if timed_out
                   else "still pending when the threshold went out of reach (cancelled)")
        reasons = [f"{v.url}: {tally.failed.get(i, pending)}" for i, v in enumerate(self._validators)
                   if i not in tally.valid]
        message = (f"{self.name}: {len(tally.valid)} valid signatures of {self.required} needed "
                   f"({len(self._validators)} validators, threshold {self.threshold_percent}%): " + "; ".join(reasons))
        if tally.rejected == len(self._validators):
            return BlobRejected(message)
        return DAUnavailable(message)

    def _remember(self, cert: QuorumCertificate) -> None:
        self._certificates[cert.blob_hash] = cert
        self._certificates.move_to_end(cert.blob_hash)
        while len(self._certificates) > MAX_CERTIFICATES:
            self._certificates.popitem(last=False)
