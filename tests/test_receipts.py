"""The pure receipt cores: receipt bytes (golden, hand-assembled), ids, slots, JSON validation, RFC 9162
Merkle trees (the RFC 6962 reference roots and every proof of trees of 1…65 leaves), the lock rules and
batch choice, the ROAST tracker (bad share excluded, withheld shares, t reached late), documents."""

from __future__ import annotations

import hashlib
import itertools
import struct
from typing import Any

import msgpack
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import frost
from consensus import receipts as rc
from consensus.group import GroupError, deserialize_element
from consensus.roast import RoastTracker
from consensus.slots import Verdict, choose_batch, decide, slot_key
from node import merkle

NODE = nacl.signing.SigningKey(bytes(range(32)))
FIELDS = dict(receipt_type="storage", node_id="n1", subject="obj", epoch=5, usage_proof_hash="11" * 32,
              execution_commitment=None, reward_base=1000, submitter_address="22" * 20, timestamp=1_700_000_000)


def test_receipt_bytes_golden() -> None:
    r = rc.sign_as_node(NODE, **FIELDS)
    key = bytes(NODE.verify_key)
    expected = (b"\x9b" + b"\x01"  # fixarray of 11, version 1
                + b"\xa7storage" + b"\xa2n1" + b"\xc4\x20" + key + b"\xa3obj" + b"\x05"
                + b"\xc4\x20" + b"\x11" * 32 + b"\xc0"  # usage proof, no execution commitment
                + b"\xcd\x03\xe8"  # 1000 as uint16
                + b"\xc4\x14" + b"\x22" * 20 + b"\xce" + struct.pack(">I", 1_700_000_000))
    assert r.to_bytes() == expected
    assert r.id == hashlib.sha256(expected).digest()
    nacl.signing.VerifyKey(key).verify(b"dsdn/usage/v1" + expected, r.node_signature)
    assert r.slot == ("storage", "n1", "obj", 5)
    assert rc.decode(expected, r.node_signature) == r
    assert rc.Receipt.from_wire(r.to_wire()) == r


def test_compute_receipt_carries_six_hashes_and_its_workload_is_the_subject() -> None:
    commitment = [f"{i:02x}" * 32 for i in range(6)]
    fields = {**FIELDS, "receipt_type": "compute", "subject": commitment[0], "execution_commitment": commitment}
    r = rc.sign_as_node(NODE, **fields)
    assert r.execution_commitment == tuple(bytes.fromhex(c) for c in commitment)
    assert b"\x96" + b"".join(b"\xc4\x20" + bytes.fromhex(c) for c in commitment) in r.to_bytes()
    with pytest.raises(rc.ReceiptError, match="execution_commitment"):
        rc.sign_as_node(NODE, **{**fields, "subject": "ff" * 32})
    with pytest.raises(rc.ReceiptError, match="execution_commitment"):
        rc.sign_as_node(NODE, **{**fields, "execution_commitment": None})


def test_an_execution_commitment_by_name_is_the_same_receipt_and_the_schema_says_so() -> None:
    """The six hashes may come by name (an object), as /openapi.json documents: exactly those six names (a
    reviewer found the object form taken but undocumented, and any other name ignored)."""
    import jsonschema_rs

    from api.receipts import RECEIPT_IN

    commitment = [f"{i:02x}" * 32 for i in range(6)]
    fields = {**FIELDS, "receipt_type": "compute", "subject": commitment[0], "execution_commitment": commitment}
    by_name = dict(zip(rc.COMMITMENT_FIELDS, commitment, strict=True))
    schema = jsonschema_rs.Draft202012Validator(RECEIPT_IN)
    signature = "00" * 64
    key = bytes(NODE.verify_key).hex()
    for form in (commitment, by_name):
        body = {**fields, "execution_commitment": form, "node_signature": signature, "node_public_key": key}
        assert rc.from_json(body).execution_commitment == tuple(bytes.fromhex(c) for c in commitment)
        assert schema.is_valid(body)
    for bad in ({**by_name, "extra": "00" * 32}, {k: by_name[k] for k in rc.COMMITMENT_FIELDS[1:]},
                {**by_name, "trace_root": "zz"}):
        body = {**fields, "execution_commitment": bad, "node_signature": signature, "node_public_key": key}
        with pytest.raises(rc.ReceiptError) as err:
            rc.from_json(body)
        assert err.value.field.startswith("execution_commitment") and not schema.is_valid(body)


@pytest.mark.parametrize(("field", "value"), [
    ("receipt_type", "bandwidth"), ("node_id", ""), ("epoch", 0), ("epoch", True), ("usage_proof_hash", "zz"),
    ("reward_base", 0), ("reward_base", 10**12 + 1), ("submitter_address", "00" * 19), ("timestamp", -1),
    ("epoch", 5.5), ("reward_base", 1e13), ("timestamp", float("nan")), ("epoch", "5"),
    ("subject", ""), ("execution_commitment", ["00" * 32] * 6),
    ("node_id", "n1\n"), ("subject", "obj\n"), ("usage_proof_hash", "11" * 32 + "\n"),  # (a regex $ allows that \n)
])
def test_malformed_fields_are_named(field: str, value: object) -> None:
    with pytest.raises(rc.ReceiptError) as err:
        rc.sign_as_node(NODE, **{**FIELDS, field: value})
    assert err.value.field == field


def test_a_json_number_with_no_fraction_is_an_integer() -> None:
    """As JSON Schema (and the OpenAPI document's ``integer``) read it: 5.0 is the receipt of epoch 5."""
    as_floats = {**FIELDS, "epoch": float(FIELDS["epoch"]), "reward_base": float(FIELDS["reward_base"]),
                 "timestamp": float(FIELDS["timestamp"])}
    assert rc.sign_as_node(NODE, **as_floats) == rc.sign_as_node(NODE, **FIELDS)


def test_non_canonical_or_oversized_bytes_are_refused() -> None:
    r = rc.sign_as_node(NODE, **FIELDS)
    raw = r.to_bytes()
    longer = raw.replace(b"\x05", b"\xcc\x05", 1)  # epoch 5 as uint8 instead of fixint: same value, not canonical
    with pytest.raises(rc.ReceiptError):
        rc.decode(longer)
    with pytest.raises(rc.ReceiptError):
        rc.Receipt.from_wire(b"\x00" * 2000)


def _decode_via_json(raw: bytes, signature: bytes) -> rc.Receipt:
    """The oracle for ``rc.decode``: the binary fields turned into JSON and judged by ``from_json``, then the
    canonical-encoding check (what decode did before it checked the binary fields directly)."""
    obj = msgpack.unpackb(raw, raw=False, max_str_len=256, max_bin_len=64, max_array_len=16, max_map_len=0)
    if type(obj) is not list or len(obj) != 11 or obj[0] != 1:
        raise rc.ReceiptError("receipt_bytes", "an 11-element array of version 1")
    _, rtype, node_id, key, subject, epoch, proof, ec, reward, submitter, ts = obj
    if not (type(key) is bytes and len(key) == 32 and type(proof) is bytes and len(proof) == 32
            and type(submitter) is bytes and len(submitter) == 20):
        raise rc.ReceiptError("receipt_bytes", "sizes")
    if ec is not None and not (type(ec) is list and len(ec) == 6 and all(type(c) is bytes and len(c) == 32
                                                                          for c in ec)):
        raise rc.ReceiptError("execution_commitment", "6 × 32 bytes")
    receipt = rc.from_json({"receipt_type": rtype, "node_id": node_id, "node_public_key": key.hex(),
                            "subject": subject, "epoch": epoch, "usage_proof_hash": proof.hex(),
                            "execution_commitment": [c.hex() for c in ec] if ec is not None else None,
                            "reward_base": reward, "submitter_address": submitter.hex(), "timestamp": ts,
                            "node_signature": signature.hex() if len(signature) == 64 else ""})
    if receipt.to_bytes() != raw:
        raise rc.ReceiptError("receipt_bytes", "the canonical encoding")
    return receipt


_FIELD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**64), st.text(max_size=70),
                          st.sampled_from([-1, 0, 1, 10**12, 10**12 + 1, 2**63 - 1, 2**63]),
                          st.sampled_from(["storage", "compute", "STORAGE", "ab" * 32, "AB" * 32, "n1", "obj"]),
                          st.binary(max_size=40), st.lists(st.binary(min_size=31, max_size=33), max_size=7))


def _agree(fields: dict, index: int, value: object, signature: bytes) -> None:
    obj = msgpack.unpackb(rc.sign_as_node(NODE, **fields).to_bytes(), raw=False)
    obj[index] = value
    try:
        raw = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, TypeError):
        return
    try:
        expected: rc.Receipt | None = _decode_via_json(raw, signature)
    except Exception:  # a ReceiptError, or the oracle's own msgpack limits: decode must refuse these too
        expected = None
    if expected is None:
        with pytest.raises(rc.ReceiptError):
            rc.decode(raw, signature)
    else:
        assert rc.decode(raw, signature) == expected


@pytest.mark.parametrize(("index", "value"), [(i, v) for i in (5, 8, 10) for v in (-1, 0, 1, 10**12, 10**12 + 1,
                                                                                   2**63 - 1, 2**63, True)])
def test_binary_decode_checks_the_integer_bounds(index: int, value: int) -> None:
    _agree(FIELDS, index, value, bytes(64))


@pytest.mark.parametrize("index", range(1, 11))
@settings(max_examples=200, deadline=None)
@given(value=_FIELD_VALUES, signature=st.one_of(st.just(bytes(64)), st.binary(min_size=63, max_size=65)),
       compute=st.booleans())
def test_binary_decode_agrees_with_the_json_rules(index: int, value: object, signature: bytes,
                                                  compute: bool) -> None:
    """Field ``index`` of a valid receipt replaced by anything: ``decode`` accepts exactly what the JSON route
    accepts, and decodes it to the same receipt."""
    workload = "cd" * 32
    fields = {**FIELDS, "receipt_type": "compute", "subject": workload,
              "execution_commitment": [workload] + ["ee" * 32] * 5} if compute else FIELDS
    _agree(fields, index, value, signature)


# ---- Merkle (RFC 9162 §2.1) -------------------------------------------------------------------------

CT_LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f"]]
CT_ROOTS = [  # RFC 6962 reference tree heads (certificate-transparency test data) for sizes 1..8
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_merkle_roots_match_the_rfc6962_reference() -> None:
    for n in range(1, 9):
        assert merkle.root(CT_LEAVES[:n]).hex() == CT_ROOTS[n - 1]
    assert [p.hex() for p in merkle.inclusion_path(0, CT_LEAVES)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]


def test_every_proof_of_trees_of_1_to_65_leaves_verifies_and_nothing_else_does() -> None:
    for n in range(1, 66):
        leaves = [hashlib.sha256(b"%d/%d" % (n, i)).digest()[: 1 + i % 40] for i in range(n)]
        root, paths = merkle.all_paths(leaves)
        assert root == merkle.root(leaves)
        for i, leaf in enumerate(leaves):
            path = paths[i]
            assert path == merkle.inclusion_path(i, leaves)
            assert merkle.verify_inclusion(leaf, i, n, path, root)
            assert not merkle.verify_inclusion(leaf + b"x", i, n, path, root)
            if n > 1:
                assert not merkle.verify_inclusion(leaf, (i + 1) % n, n, path, root)
                # (the tree size itself is bound by the batch signature, not by the path: RFC 9162 §2.1.3.2
                # accepts some paths for a neighbouring size, so a verifier must check the signed size)
                assert not merkle.verify_inclusion(leaf, i, n, [*path[:-1], bytes(32)], root)
            assert not merkle.verify_inclusion(leaf, i, n, [*path, bytes(32)], root)
            if n & (n - 1) == 0:  # a whole path of a full tree, claimed for a tree twice its size (it must end at 0)
                assert not merkle.verify_inclusion(leaf, i, 2 * n, path, root)
        assert not merkle.verify_inclusion(leaves[0], n, n, paths[0], root)


# ---- lock rules --------------------------------------------------------------------------------------


def receipt(reward: int = 1000, **over: object) -> rc.Receipt:
    return rc.sign_as_node(NODE, **{**FIELDS, "reward_base": reward, **over})


def ok(_: rc.Receipt) -> tuple[Verdict, str]:
    return Verdict.OK, ""


def test_lock_rules_absent_same_and_conflict() -> None:
    a, b, c = receipt(1), receipt(2), receipt(3, epoch=6)
    decisions, new = decide([a, c], {}, ok)
    assert [d.verdict for d in decisions] == [Verdict.OK, Verdict.OK]
    assert {k: r.id for k, r in new.items()} == {slot_key(a.slot): a.id, slot_key(c.slot): c.id}
    held = {k: r.id for k, r in new.items()}
    decisions, new = decide([a, b], held, ok)
    assert decisions[0].verdict is Verdict.OK and not new  # the same receipt again: fine, nothing new
    assert decisions[1].verdict is Verdict.CONFLICT and decisions[1].conflicting_id == a.id
    decisions, new = decide([b, a], {}, ok)  # two receipts of one slot in one batch: the first wins
    assert [d.verdict for d in decisions] == [Verdict.OK, Verdict.CONFLICT] and list(new.values()) == [b]


def test_invalid_and_not_yet_valid_receipts_take_no_lock() -> None:
    a = receipt()
    for verdict in (Verdict.INVALID, Verdict.NOT_YET):
        decisions, new = decide([a], {}, lambda _, v=verdict: (v, "because"))
        assert decisions[0].verdict is verdict and decisions[0].reason == "because" and not new


def test_batch_choice_drops_receipts_without_t_lockers_then_the_weakest() -> None:
    r = [bytes([i]) * 32 for i in range(4)]
    accepted = {1: set(r), 2: set(r), 3: {r[0], r[1], r[2]}, 4: {r[0]}}
    chosen, signers = choose_batch(r, accepted, 3)
    assert chosen == [r[0], r[1], r[2]] and signers == {1, 2, 3}  # r3 has two lockers only
    accepted = {1: {r[0], r[1]}, 2: {r[0], r[2]}, 3: {r[0], r[1], r[2]}, 4: {r[1], r[2]}}
    chosen, signers = choose_batch(r[:3], accepted, 3)
    assert len(signers) >= 3 and all(all(x in accepted[s] for x in chosen) for s in signers)
    assert r[0] in chosen or r[1] in chosen or r[2] in chosen
    assert choose_batch(r, {1: set(r), 2: set(r)}, 3) == ([], set())


# ---- ROAST ---------------------------------------------------------------------------------------------

MESSAGE = b"batch message"


@pytest.fixture(scope="module")
def keys() -> dict[int, frost.KeyShare]:
    return frost.trusted_dealer_key_shares(5, 3)


def tracker(keys: dict[int, frost.KeyShare], eager: bool = True) -> RoastTracker:
    k = keys[1]
    return RoastTracker(3, set(keys), MESSAGE, k.group_public_key, k.verifying_shares, eager=eager)


class Signer:
    def __init__(self, key: frost.KeyShare) -> None:
        self.key, self.nonces = key, {}

    def commit(self) -> tuple[bytes, bytes]:
        nonces, commitment = frost.commit(self.key.secret_share)
        self.nonces[commitment] = nonces
        return commitment

    def share(self, commitments: dict[int, tuple[bytes, bytes]]) -> bytes:
        nonces = self.nonces.pop(commitments[self.key.identifier])
        return frost.sign(self.key.identifier, self.key.secret_share, self.key.group_public_key, nonces, MESSAGE,
                          commitments)


def test_roast_signs_with_the_first_t_ready_signers(keys: dict[int, frost.KeyShare]) -> None:
    tr, signers = tracker(keys), {i: Signer(k) for i, k in keys.items()}
    started = [s for i in (1, 2, 3) for s in tr.add_commitment(i, signers[i].commit()).start]
    assert len(started) == 1 and set(started[0].commitments) == {1, 2, 3}
    for i in (1, 2, 3):
        out = tr.receive(i, 0, signers[i].share(started[0].commitments), signers[i].commit())
    assert tr.done and out.signature == tr.signature and out.signers == (1, 2, 3)
    nacl.signing.VerifyKey(keys[1].group_public_key).verify(MESSAGE, tr.signature)


def test_roast_excludes_a_bad_share_and_completes_with_others(keys: dict[int, frost.KeyShare]) -> None:
    tr, signers = tracker(keys), {i: Signer(k) for i, k in keys.items()}
    sessions = [s for i in (1, 2, 3, 4, 5) for s in tr.add_commitment(i, signers[i].commit()).start]
    first = sessions[0]
    assert set(first.commitments) == {1, 2, 3}
    bad = bytes(31) + b"\x07"
    blamed: set[int] = set()
    pending = [(i, first) for i in (1, 2, 3)]
    while not tr.done:
        i, session = pending.pop(0)
        share = bad if i == 2 else signers[i].share(session.commitments)
        out = tr.receive(i, session.id, share, signers[i].commit())
        blamed |= out.blamed
        pending += [(j, s) for s in out.start for j in s.commitments]
    assert blamed == {2} and 2 not in tr.signers and 2 in tr.malicious
    assert all(2 not in s.commitments for s in tr.sessions[1:])  # its next commitment was not taken either
    nacl.signing.VerifyKey(keys[1].group_public_key).verify(MESSAGE, tr.signature)  # type: ignore[arg-type]


def test_roast_blames_a_signer_repeating_a_commitment_used_or_offered(keys: dict[int, frost.KeyShare]) -> None:
    """A commitment offered by another signer, or one of its own already used, names the signer who repeats it (a
    planted bug that blamed nobody passed every test: a reviewer's finding)."""
    tr, signers = tracker(keys, eager=False), {i: Signer(k) for i, k in keys.items()}
    offered = signers[1].commit()
    tr.add_commitment(1, offered)
    out = tr.add_commitment(2, offered)  # another signer's commitment
    assert out.blamed == {2} and 2 in tr.malicious and not out.start
    sessions = [s for i in (3, 4) for s in tr.add_commitment(i, signers[i].commit()).start]
    [session] = sessions
    used = session.commitments[3]
    out = tr.receive(3, session.id, signers[3].share(session.commitments), used)  # its own, already used
    assert 3 in out.blamed and 3 in tr.malicious


def not_a_point() -> bytes:
    """32 bytes that decode to no point of the prime-order group (about half of all strings do not)."""
    for k in range(256):
        candidate = bytes([k]) * 32
        try:
            deserialize_element(candidate, "candidate")
        except GroupError:
            return candidate
    raise AssertionError("no invalid encoding found")


@pytest.mark.parametrize("which", ["hiding", "binding"])
def test_roast_names_a_commitment_that_is_no_point_before_anyone_is_asked(keys: dict[int, frost.KeyShare],
                                                                          which: str) -> None:
    """A liar's nonce commitment that is no group element would make every honest signer of its session refuse
    (spending their commitments): the session is not started, the liar is named, the others stay ready."""
    tr, signers = tracker(keys), {i: Signer(k) for i, k in keys.items()}
    junk = not_a_point()
    out = tr.add_commitment(1, signers[1].commit())
    liar = signers[2].commit()
    out = tr.add_commitment(2, (junk, liar[1]) if which == "hiding" else (liar[0], junk))
    assert not out.start and not out.blamed  # fewer than t ready: nothing checked yet
    out = tr.add_commitment(3, signers[3].commit())
    assert out.blamed == {2} and not out.start and 2 in tr.malicious and set(tr.ready) == {1, 3}
    started = [s for s in tr.add_commitment(4, signers[4].commit()).start]
    assert len(started) == 1 and set(started[0].commitments) == {1, 3, 4}
    for i in (1, 3, 4):
        tr.receive(i, 0, signers[i].share(started[0].commitments), signers[i].commit())
    assert tr.signers == (1, 3, 4)
    nacl.signing.VerifyKey(keys[1].group_public_key).verify(MESSAGE, tr.signature)  # type: ignore[arg-type]


@pytest.mark.parametrize("junk", [(b"\x00" * 31, b"\x02" * 31), (b"\x01" * 32,), [b"\x01" * 32, b"\x02" * 32],
                                  (b"\x01" * 32, "x" * 32), None])
def test_roast_names_a_commitment_that_is_not_two_32_byte_points_at_once(keys: dict[int, frost.KeyShare],
                                                                         junk: object) -> None:
    """A commitment of the wrong shape (short points, one point, a list) was taken as ready: the session it joined
    failed to prepare with no one named, and the honest signers' commitments in it were spent for nothing, session
    after session (a list raised TypeError: unhashable). Its sender is named at once; the others sign."""
    tr, signers = tracker(keys), {i: Signer(k) for i, k in keys.items()}
    if junk is None:  # (the control: a well-formed commitment of a signer is taken)
        out = tr.add_commitment(2, signers[2].commit())
        assert not out.blamed and 2 in tr.ready
        return
    out = tr.add_commitment(2, junk)  # type: ignore[arg-type]
    assert out.blamed == {2} and 2 in tr.malicious and 2 not in tr.ready
    for i in (1, 3):
        out = tr.add_commitment(i, signers[i].commit())
    started = [s for s in tr.add_commitment(4, signers[4].commit()).start] + out.start
    assert len(started) == 1 and set(started[0].commitments) == {1, 3, 4}


def test_roast_withheld_shares_and_t_reached_late(keys: dict[int, frost.KeyShare]) -> None:
    tr, signers = tracker(keys, eager=False), {i: Signer(k) for i, k in keys.items()}
    assert not tr.add_commitment(1, signers[1].commit()).start
    assert not tr.add_commitment(2, signers[2].commit()).start  # t not reached yet
    first = tr.add_commitment(3, signers[3].commit()).start[0]
    assert set(first.commitments) == {1, 2, 3}
    # 3 withholds its share; 1 and 2 answer with fresh commitments; 4 comes late
    tr.receive(1, 0, signers[1].share(first.commitments), signers[1].commit())
    tr.receive(2, 0, signers[2].share(first.commitments), signers[2].commit())
    assert not tr.add_commitment(4, signers[4].commit()).start  # patient: session 0 is still live
    second = tr.kick().start  # the driver's patience ran out
    assert len(second) == 1 and set(second[0].commitments) == {1, 2, 4}
    for i in (1, 2, 4):
        tr.receive(i, 1, signers[i].share(second[0].commitments), signers[i].commit())
    assert tr.done and tr.signers == (1, 2, 4)
    # a commitment offered twice, or a share nobody asked for, makes a signer malicious
    tr2 = tracker(keys)
    c = signers[5].commit()
    tr2.add_commitment(5, c)
    assert tr2.add_commitment(5, c).blamed == {5}
    tr3 = tracker(keys)
    assert tr3.receive(1, 0, bytes(32), None).blamed == {1}


def test_roast_forgets_a_timed_out_signer_without_blaming_it(keys: dict[int, frost.KeyShare]) -> None:
    tr, signers = tracker(keys, eager=False), {i: Signer(k) for i, k in keys.items()}
    first = next(s for i in (1, 2, 3) for s in tr.add_commitment(i, signers[i].commit()).start)
    tr.add_commitment(4, signers[4].commit())
    tr.receive(1, 0, signers[1].share(first.commitments), signers[1].commit())
    tr.receive(2, 0, signers[2].share(first.commitments), signers[2].commit())
    out = tr.forget(3)  # 3's request timed out: its session is dead, a new one starts at once
    assert not out.blamed and len(out.start) == 1 and 3 not in out.start[0].commitments
    late = tr.receive(3, 0, signers[3].share(first.commitments), signers[3].commit())
    assert not late.blamed and 3 not in tr.malicious


def test_at_most_n_minus_t_plus_one_sessions_with_silent_signers(keys: dict[int, frost.KeyShare]) -> None:
    """Signers 4 and 5 never answer: ROAST needs no timeout to finish with 1, 2, 3."""
    for order in itertools.permutations([1, 2, 3, 4, 5]):
        tr, signers = tracker(keys), {i: Signer(k) for i, k in keys.items()}
        queue = [(i, s) for i in order for s in tr.add_commitment(i, signers[i].commit()).start]
        queue = [(j, s) for _, s in queue for j in s.commitments]
        while queue and not tr.done:
            i, s = queue.pop(0)
            if i in (4, 5):
                continue
            out = tr.receive(i, s.id, signers[i].share(s.commitments), signers[i].commit())
            queue += [(j, n) for n in out.start for j in n.commitments]
        assert tr.done and set(tr.signers) == {1, 2, 3} and len(tr.sessions) <= 5 - 3 + 1


def test_documents_verify_offline_and_tampering_is_caught(keys: dict[int, frost.KeyShare]) -> None:
    receipts = [receipt(i + 1, epoch=7 + i) for i in range(5)]
    raws = [r.to_bytes() for r in receipts]
    root, paths = merkle.all_paths(raws)
    group = keys[1].group_public_key
    message = rc.batch_message(group, root, len(raws))
    assert message == b"dsdn/receipt-batch/v1" + group + root + (5).to_bytes(8, "big")
    signers = {i: Signer(keys[i]) for i in (1, 2, 3)}
    commitments = {i: s.commit() for i, s in signers.items()}
    shares = {i: frost.sign(i, keys[i].secret_share, group, s.nonces.pop(commitments[i]), message, commitments)
              for i, s in signers.items()}
    signature = frost.aggregate(commitments, message, group, shares)
    doc = rc.document(receipts[3], root, 5, 3, paths[3], signature, group, ["c0", "c1", "c2"])
    assert rc.verify_document(doc) == (True, "valid") and rc.verify_document(doc, group) == (True, "valid")
    assert not rc.verify_document(doc, bytes(keys[1].verifying_shares[2]))[0]
    # the top-level epoch and status are what readers take (and GET /receipts filters on): an epoch other than the
    # receipt's, or a status other than final, was reported valid (a reviewer's reproduction)
    for path, value in [(("receipt", "reward_base"), 999), (("batch", "index"), 2), (("receipt_id",), "00" * 32),
                        (("signature",), "00" * 64), (("batch", "tree_size"), 6), (("epoch",), 1),
                        (("epoch",), 10.0), (("status",), "rejected"),
                        # the signers (a shape check; the signature does not cover them) were never read, and a
                        # fraction lost to the float's precision matched the bytes (a reviewer's reproductions)
                        (("signers",), []), (("signers",), 42), (("signers",), ["c0", None]),
                        (("signers",), ["c0", "c0"]), (("signers",), ["bad id"]),
                        (("receipt", "timestamp"), float(doc["receipt"]["timestamp"])), (("receipt", "epoch"), 10.0)]:
        bad = {**doc, "receipt": dict(doc["receipt"]), "batch": dict(doc["batch"])}
        target = bad
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
        valid, reason = rc.verify_document(bad)
        assert not valid and reason
    assert rc.verify_document("not a doc")[0] is False
    assert not rc.verify_document({k: v for k, v in doc.items() if k != "signers"})[0]
    # hex in either case, as the schema says, and nothing else: a receipt_id in upper case was found invalid, and
    # whitespace in any other hex field (skipped by bytes.fromhex) valid (a reviewer's reproduction)
    for field in ("receipt_id", "signature", "group_public_key", "receipt_bytes"):
        assert rc.verify_document({**doc, field: doc[field].upper()}) == (True, "valid"), field
    spaced: list[dict[str, Any]] = [{**doc, "batch": {**doc["batch"], "root": doc["batch"]["root"][:8] + " " +
                                                       doc["batch"]["root"][8:]}},
                                    {**doc, "batch": {**doc["batch"], "path": [" " + p for p in doc["batch"]["path"]]}},
                                    {**doc, "batch": {**doc["batch"], "path": doc["batch"]["path"][0]}}]
    spaced += [{**doc, field: doc[field][:6] + sep + doc[field][6:]} for field in
               ("receipt_id", "signature", "group_public_key", "receipt_bytes") for sep in (" ", "\t", "\n")]
    spaced.append({**doc, "receipt": {**doc["receipt"], "node_signature": " " + doc["receipt"]["node_signature"]}})
    for bad in spaced:
        valid, reason = rc.verify_document(bad)
        assert not valid and reason.startswith(("malformed document", "invalid receipt")), reason
    raw = bytes.fromhex(doc["receipt_bytes"])
    items = msgpack.unpackb(raw)
    at = 1 + sum(len(msgpack.packb(item, use_bin_type=True)) for item in items[:5])  # the epoch (10), a fixint
    assert items[5] == 10 and raw[at] == 10
    uint64_epoch = raw[:at] + b"\xcf" + (10).to_bytes(8, "big") + raw[at + 1:]
    valid, reason = rc.verify_document({**doc, "receipt_bytes": uint64_epoch.hex()})  # a non-canonical encoding:
    assert not valid and reason.startswith("invalid receipt")  # the document is invalid, not malformed


def test_roast_takes_nothing_more_from_a_signer_whose_share_just_failed(keys: dict[int, frost.KeyShare]) -> None:
    """The liar answers last: its bad share makes the aggregate fail, and its next commitment must not make it
    ready for the next session (found by dsdn nemesis: a blamed signer kept being chosen again)."""
    tr, signers = tracker(keys, eager=False), {i: Signer(k) for i, k in keys.items()}
    first = next(s for i in (1, 2, 3) for s in tr.add_commitment(i, signers[i].commit()).start)
    tr.receive(1, 0, signers[1].share(first.commitments), signers[1].commit())
    tr.receive(3, 0, signers[3].share(first.commitments), signers[3].commit())
    out = tr.receive(2, 0, bytes(31) + b"\x05", signers[2].commit())
    assert out.blamed == {2} and 2 not in tr.ready
    second = tr.add_commitment(4, signers[4].commit()).start
    assert len(second) == 1 and set(second[0].commitments) == {1, 3, 4}


def test_a_node_signature_found_valid_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member checks each receipt's node signature when it locks it, and the ledger again when the signed batch
    is applied: ~70 µs a receipt on the event loop, 11 times the cost of applying a batch (a reviewer's
    measurement). A signature found valid is remembered; an invalid one never is."""
    from node import receipt_bytes

    key = nacl.signing.SigningKey(b"c" * 32)
    receipt = rc.sign_as_node(key, receipt_type="storage", node_id="n1", subject="obj-cache", epoch=1,
                              usage_proof_hash="00" * 32, execution_commitment=None, reward_base=1,
                              submitter_address="00" * 20, timestamp=0)
    calls = []
    verify = nacl.signing.VerifyKey.verify
    monkeypatch.setattr(nacl.signing.VerifyKey, "verify", lambda self, *a: calls.append(1) or verify(self, *a))
    raw, pub = receipt.to_bytes(), bytes(key.verify_key)
    assert receipt_bytes.signed_by_node(raw, pub, receipt.node_signature) and len(calls) == 1
    assert receipt_bytes.signed_by_node(raw, pub, receipt.node_signature) and len(calls) == 1  # remembered
    forged = bytes(64)
    assert not receipt_bytes.signed_by_node(raw, pub, forged) and not receipt_bytes.signed_by_node(raw, pub, forged)
    assert len(calls) == 3  # an invalid signature is checked every time
    other = nacl.signing.SigningKey(b"d" * 32)  # the same signature under another key is another question
    assert not receipt_bytes.signed_by_node(raw, bytes(other.verify_key), receipt.node_signature)


def test_roast_ends_a_session_whose_shares_verify_but_whose_aggregate_does_not(keys: dict[int, frost.KeyShare]
                                                                               ) -> None:
    """Every share verifies, the aggregate does not (here: a session below the key's threshold): FrostError without
    a culprit escaped the tracker and took the receipt service down. The session ends; nobody is blamed."""
    k = keys[1]
    tr = RoastTracker(2, set(keys), MESSAGE, k.group_public_key, k.verifying_shares, eager=True)
    signers = {i: Signer(key) for i, key in keys.items()}
    started = [s for i in (1, 2) for s in tr.add_commitment(i, signers[i].commit()).start]
    assert len(started) == 1
    outs = [tr.receive(i, 0, signers[i].share(started[0].commitments), None) for i in (1, 2)]
    assert not tr.done and tr.signature is None and not any(o.blamed for o in outs) and started[0].dead
