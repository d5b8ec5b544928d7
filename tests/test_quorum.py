"""QuorumDA against real blob-store validators (in-process servers on port 0, SQLite in tmp_path)."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import msgpack
import nacl.signing
import pytest
import trio

from deploy.blobstore import serve_blobstore
from node import config as config_mod
from node.coordinator import Coordinator
from node.da.base import BlobNotFound, BlobRef, DAUnavailable
from node.da.blobstore_client import BlobRejected, BlobStoreDA
from node.da.factory import build_layers
from node.da.quorum import QuorumCertificate, QuorumDA, required_signatures
from tests.test_blobstore import Server, dead_url, hung_url, start_server

__all__ = ["hung_url"]  # the fixture, re-used from test_blobstore


@pytest.fixture
async def validators(nursery: trio.Nursery, tmp_path: Path) -> list[Server]:
    return [await start_server(nursery, tmp_path / f"v{i}") for i in range(3)]


def quorum(urls: list[str], keys: list[bytes | None] | None, threshold: int = 67, timeout: float = 2.0) -> QuorumDA:
    return QuorumDA(urls, threshold_percent=threshold, signature_timeout_s=timeout, public_keys=keys, timeout_s=2.0)


def keys_of(servers: list[Server]) -> list[bytes | None]:
    return [s.store.public_key for s in servers]


def test_required_signatures() -> None:
    table = {(3, 67): 2, (3, 100): 3, (3, 1): 1, (3, 34): 2, (3, 33): 1, (2, 67): 2, (2, 50): 1, (1, 67): 1,
             (4, 67): 3, (6, 67): 4, (9, 67): 6, (100, 67): 67, (10, 51): 6, (5, 60): 3, (200, 100): 200,
             (1000, 100): 1000}
    assert {k: required_signatures(*k) for k in table} == table
    with pytest.raises(ValueError):
        required_signatures(3, 0)
    with pytest.raises(ValueError):
        required_signatures(0, 67)


def test_constructor_checks() -> None:
    key = bytes(nacl.signing.SigningKey.generate().verify_key)
    with pytest.raises(ValueError, match="threshold"):
        QuorumDA(["http://a"], threshold_percent=101, signature_timeout_s=1)
    with pytest.raises(ValueError, match="public keys"):
        QuorumDA(["http://a", "http://b"], threshold_percent=67, signature_timeout_s=1, public_keys=[key])
    with pytest.raises(ValueError, match="same public key"):
        QuorumDA(["http://a", "http://b"], threshold_percent=67, signature_timeout_s=1, public_keys=[key, key])


async def test_all_up(validators: list[Server]) -> None:
    keys = [v.store.public_key for v in validators]
    q = quorum([v.url for v in validators], list(keys))
    ref = await q.post(b"batch-1")
    digest = hashlib.sha256(b"batch-1").digest()
    assert ref == BlobRef("secondary", 1, digest)
    cert = q.certificate(ref)
    assert cert is not None and cert.blob_hash == digest and cert.required == 2 and len(cert.signatures) >= 2
    assert cert.verify(keys, q.required) and cert.valid_signers(keys) == {s.public_key for s in cert.signatures}
    assert not cert.verify([bytes(nacl.signing.SigningKey.generate().verify_key)], q.required)
    # the verifier's threshold counts, not the one a certificate states: one saying it needs none is not enough
    empty = QuorumCertificate(cert.namespace, cert.blob_hash, (), 0, 3)
    assert not empty.verify(keys, q.required) and not empty.verify(keys, 0)
    assert QuorumCertificate.from_bytes(cert.to_bytes()) == cert
    wrong_types = msgpack.unpackb(cert.to_bytes())
    wrong_types["signatures"][0][1] = [1, 2]  # a public key as a list: verify() raised TypeError (a reviewer's find)
    for junk in (b"", b"\x93\x01\x02\x03", msgpack.packb({"namespace": 1}), msgpack.packb(wrong_types)):
        with pytest.raises(ValueError, match="not a quorum certificate"):
            QuorumCertificate.from_bytes(junk)
    assert await q.get(ref) == b"batch-1"
    assert [v.url for v in q.validators()] == [v.url for v in validators]
    holders = [follower for follower in q.validators() if (await follower.read_after(0, 10)).items]
    assert len(holders) >= 2  # a third post may have been cancelled once two had signed
    page = await q.read_after(0, 10)  # follows validator 0, which may be that third one
    assert page.items in ([(ref, b"batch-1")], []) and page.at_head and await q.head() == len(page.items)
    await q.aclose()


async def test_one_down_still_meets_two_thirds(validators: list[Server]) -> None:
    urls = [await dead_url()] + [v.url for v in validators[1:]]
    keys = [None, *keys_of(validators[1:])]
    q = quorum(urls, keys)
    ref = await q.post(b"batch")
    cert = q.certificate(ref)
    assert cert is not None and {s.url for s in cert.signatures} == {v.url for v in validators[1:]}
    assert ref.height == 1  # the first signer's position, since the followed validator (0) is down
    assert await q.get(ref) == b"batch"
    await q.aclose()


async def test_two_down_fails_with_reasons(validators: list[Server]) -> None:
    down1, down2 = await dead_url(), await dead_url()
    q = quorum([validators[0].url, down1, down2], [validators[0].store.public_key, None, None])
    start = trio.current_time()
    with pytest.raises(DAUnavailable) as caught:
        await q.post(b"batch")
    assert trio.current_time() - start < 1.0  # fails as soon as 2 of 3 are known to be down, not at the timeout
    message = str(caught.value)
    assert "0 valid signatures of 2 needed" in message and "3 validators, threshold 67%" in message
    assert f"{validators[0].url}: still pending when the threshold went out of reach" in message
    assert f"{down1}: unavailable" in message and f"{down2}: unavailable" in message and "ConnectError" in message
    assert q.certificate(BlobRef("secondary", 0, hashlib.sha256(b"batch").digest())) is None
    await q.aclose()


async def test_wrong_key_is_not_counted(validators: list[Server]) -> None:
    impostor = bytes(nacl.signing.SigningKey.generate().verify_key)
    keys = [*keys_of(validators[:2]), impostor]
    q = quorum([v.url for v in validators], keys, threshold=100)
    with pytest.raises(DAUnavailable) as caught:
        await q.post(b"batch")
    # fails as soon as the impostor's answer makes 3 of 3 impossible; the honest two may still be in flight
    assert "valid signatures of 3 needed" in str(caught.value)
    assert f"{validators[2].url}: invalid answer" in str(caught.value) and "expected" in str(caught.value)
    q2 = quorum([v.url for v in validators], keys)  # 67%: the two honest ones suffice, the impostor is excluded
    ref = await q2.post(b"batch")
    cert = q2.certificate(ref)
    assert cert is not None and validators[2].url not in {s.url for s in cert.signatures}
    await q.aclose()
    await q2.aclose()


async def test_same_store_twice_counts_once(validators: list[Server]) -> None:
    urls = [validators[0].url, validators[0].url + "/", validators[1].url]
    q = quorum(urls, None, threshold=100)  # keys pinned on first use: the first two pin the same key
    with pytest.raises(DAUnavailable, match="counted once"):
        await q.post(b"batch")
    # the health check counts stores as a post does: it passed here while every post failed (a reviewer's
    # reproduction), and the DA status machine flapped between its checks and the writes
    for check in (q.head, partial(q.probe, 2.0)):
        with pytest.raises(DAUnavailable, match="3 of 3 validators answer \\(2 distinct stores\\)"):
            await check()
    await q.aclose()
    fresh = quorum(urls, None, threshold=100)  # nothing pinned yet: the keys their /health names count
    with pytest.raises(DAUnavailable, match="2 distinct stores"):
        await fresh.probe(2.0)
    await fresh.aclose()
    two_of_three = quorum(urls, None, threshold=67)  # two distinct stores of three URLs: 2 needed, met
    assert await two_of_three.probe(2.0) == await two_of_three.head() == 1  # v0 holds the blob of the failed post
    await two_of_three.aclose()


async def test_hung_validator_bounded_by_signature_timeout(validators: list[Server], hung_url: str) -> None:
    urls = [hung_url] + [v.url for v in validators[1:]]
    keys = [None, *keys_of(validators[1:])]
    fast = quorum(urls, keys, timeout=1.0)
    start = trio.current_time()
    ref = await fast.post(b"batch")  # 2 of 3 answer at once: no waiting for the hung one
    assert trio.current_time() - start < 0.9 and ref.commitment == hashlib.sha256(b"batch").digest()
    strict = quorum(urls, keys, threshold=100, timeout=0.5)
    start = trio.current_time()
    with pytest.raises(DAUnavailable) as caught:
        await strict.post(b"batch")
    elapsed = trio.current_time() - start
    assert 0.4 < elapsed < 1.5, elapsed
    assert f"{hung_url}: no answer within 0.5s" in str(caught.value)
    await fast.aclose()
    await strict.aclose()


async def test_a_read_does_not_wait_out_a_hung_validator_and_is_bounded_in_all(validators: list[Server],
                                                                               hung_url: str) -> None:
    """Validators were asked one after another: a read without a certificate in memory (after a restart, or
    another member's blob) waited each hung validator's whole timeout (3 reads: 6 s with a timeout of 2 s), and
    with every validator hung n times it (a reviewer's reproduction). The next is asked once one is silent for a
    while (each keeps its own timeout: a slow working one behind hung ones is not cut short)."""
    urls = [hung_url] + [v.url for v in validators[1:]]
    keys = [None, *keys_of(validators[1:])]
    writer = quorum(urls, keys, timeout=1.0)
    refs = [await writer.post(b"blob %d" % i) for i in range(3)]
    reader = quorum(urls, keys)  # timeout_s 2.0, no certificates
    start = trio.current_time()
    assert [await reader.get(ref) for ref in refs] == [b"blob %d" % i for i in range(3)]
    assert trio.current_time() - start < 3 * 1.0, trio.current_time() - start  # (sequential: 3 × 2.0 s)
    all_hung = QuorumDA([hung_url] * 3, threshold_percent=67, signature_timeout_s=1.0, timeout_s=1.0)
    start = trio.current_time()
    with pytest.raises(DAUnavailable, match="could not read blob"):
        await all_hung.get(refs[0])
    assert trio.current_time() - start < 2.0  # (sequential: 3.0 s; staggered: the last asked at 0.5 s)
    for q in (writer, reader, all_hung):
        await q.aclose()


async def test_a_slow_working_validator_behind_hung_ones_keeps_its_own_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    """A bound on the whole read cut the validator asked third, slow but working, to half its timeout behind two
    hung ones: every read of a large blob failed while they hung (a regression review's reproduction). An error
    other than a DA one from one validator is that validator's failure, not the read's."""
    import trio.testing

    class Fake:
        def __init__(self, url: str, delay: float | None, error: Exception | None = None) -> None:
            self.url, self.delay, self.error = url, delay, error

        async def fetch(self, commitment: bytes) -> bytes:
            with trio.fail_after(2.0):  # (BlobStoreDA's own timeout_s)
                await trio.sleep(self.delay if self.delay is not None else 10**6)
            if self.error is not None:
                raise self.error
            return b"blob"

    ref = BlobRef("secondary", 1, hashlib.sha256(b"blob").digest())
    for fakes in ([Fake("hung-1", None), Fake("slow", 1.6)], [Fake("hung-1", None), Fake("hung-2", None),
                                                              Fake("slow", 1.6)],
                  [Fake("odd", 0.1, RuntimeError("odd")), Fake("slow", 1.6)]):
        q = QuorumDA(["http://127.0.0.1:9"] * len(fakes), threshold_percent=67, signature_timeout_s=1.0,
                     timeout_s=2.0)
        q._validators = fakes  # type: ignore[assignment]
        assert await q.get(ref) == b"blob"


async def test_get_falls_back_when_a_signer_is_down(validators: list[Server]) -> None:
    q = quorum([v.url for v in validators], keys_of(validators), threshold=100)
    ref = await q.post(b"kept")
    await validators[0].shutdown()
    assert await q.get(ref) == b"kept"
    fresh = quorum([v.url for v in validators], keys_of(validators))  # no certificate: tries every validator
    assert fresh.certificate(ref) is None and await fresh.get(ref) == b"kept"
    with pytest.raises(DAUnavailable, match="not found"):  # one validator unreachable: absence is not proven
        await fresh.get(BlobRef("secondary", 1, hashlib.sha256(b"never").digest()))
    await q.aclose()
    await fresh.aclose()


async def test_get_not_found_when_every_validator_says_so(validators: list[Server]) -> None:
    q = quorum([v.url for v in validators], keys_of(validators))
    with pytest.raises(BlobNotFound):
        await q.get(BlobRef("secondary", 1, hashlib.sha256(b"never").digest()))
    await q.aclose()


async def test_follow_each_validator(validators: list[Server]) -> None:
    q = quorum([v.url for v in validators], keys_of(validators), threshold=100)
    refs = [await q.post(f"b{i}".encode()) for i in range(3)]
    for follower in q.validators():
        assert isinstance(follower, BlobStoreDA)
        page = await follower.read_after(0, 10)
        assert [ref.commitment for ref, _ in page.items] == [r.commitment for r in refs]
        assert page.items[0][0].layer.startswith("secondary/")
    page = await q.read_after(1, 10)
    assert [ref for ref, _ in page.items] == refs[1:]
    await q.aclose()


async def test_every_validator_rejecting_is_not_an_outage(nursery: trio.Nursery, tmp_path: Path) -> None:
    small = [await start_server(nursery, tmp_path / f"s{i}", max_body_bytes=8) for i in range(2)]
    q = quorum([s.url for s in small], keys_of(small))
    with pytest.raises(BlobRejected, match="0 valid signatures of 2 needed"):
        await q.post(b"more than eight bytes")
    assert await q.post(b"small") is not None
    await q.aclose()


async def test_every_validator_down_with_a_healthy_primary_leaves_the_coordinator_ready(tmp_path: Path) -> None:
    """The quorum layer's validators all stop (in `cluster up` they are the other coordinators) while the primary
    takes the writes: the DA status reports the quorum layer down, so its validators' logs are that outage, not
    stuck logs. Counting outages as stuck made every such coordinator unready (a reviewer's reproduction)."""
    async with trio.open_nursery() as outer:
        stops, urls = [], []
        for i in range(3):
            stop = trio.Event()
            stops.append(stop)
            urls.append(await outer.start(partial(serve_blobstore, "127.0.0.1", 0, tmp_path / f"v{i}",
                                                  shutdown_trigger=stop.wait)))
        cfg = config_mod.load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0",
                               "COORDINATOR_DATA_DIR": str(tmp_path / "c0"), "PUBLISH_INTERVAL_MS": "10",
                               "DA_HEALTH_INTERVAL_MS": "200", "ENABLE_FALLBACK": "true", "FALLBACK_DA_TYPE": "quorum",
                               "QUORUM_VALIDATORS": ",".join(urls), "DA_TIMEOUT_MS": "1000"})
        layers = build_layers(cfg)
        coord = Coordinator(cfg, layers.primary, layers.secondary, layers.emergency, layers.followed)
        for consumer in coord.consumers.values():
            consumer.stuck_after_s = 3.0
        async with trio.open_nursery() as inner:
            await inner.start(coord.run)
            with trio.fail_after(20):
                while coord.readiness() != {"ready": True}:
                    await trio.sleep(0.1)
            for stop in stops:
                stop.set()
            await trio.sleep(6)  # twice the (shortened) stuck threshold
            snap = coord.da_view()
            assert snap.healthy == {"primary": True, "secondary": False} and snap.takes_writes
            assert any(c.failing_since is not None for name, c in coord.consumers.items() if name.startswith(
                "secondary/"))  # the validators' logs do fail
            assert coord.readiness() == {"ready": True}
            inner.cancel_scope.cancel()
        outer.cancel_scope.cancel()
