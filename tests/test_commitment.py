"""Celestia blob share commitments: 16 real-chain vectors, share counts, subtree widths, mountain ranges, rejections."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from node.da import commitment as c

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS_PATH = REPO_ROOT / "tests" / "vectors" / "celestia-commitments.json"  # provenance: tests/vectors/README.md
NS = bytes(19) + b"\x01" * 10


def _load_vectors() -> list[dict[str, Any]]:
    if not VECTORS_PATH.is_file():
        return []
    return json.loads(VECTORS_PATH.read_text())


VECTORS = _load_vectors()


def test_vectors_file_present() -> None:
    assert VECTORS_PATH.is_file(), (
        f"Celestia commitment vectors not found at {VECTORS_PATH}"
    )
    assert len(VECTORS) == 16


@pytest.mark.parametrize("i", range(16))
def test_vector(i: int) -> None:
    assert i < len(VECTORS), f"vector {i} missing: {VECTORS_PATH} not found or has {len(VECTORS)} vectors"
    v = VECTORS[i]
    ns, data = bytes.fromhex(v["namespace_hex"]), bytes.fromhex(v["data_hex"])
    assert len(data) == v["data_len"]
    shares = c.split_shares(ns, data, v["share_version"])
    assert len(shares) == v["share_count"] == c.share_count(len(data))
    assert c.subtree_width(len(shares)) == v["subtree_width"]
    assert c.blob_commitment(ns, data, v["share_version"]).hex() == v["commitment_hex"], v["source"]


@pytest.mark.parametrize(("size", "count"), [(1, 1), (478, 1), (479, 2), (960, 2), (961, 3), (1442, 3), (1443, 4)])
def test_share_count(size: int, count: int) -> None:
    assert c.share_count(size) == count
    assert len(c.split_shares(NS, b"\xab" * size)) == count


def test_share_layout() -> None:
    data = bytes((i % 255) + 1 for i in range(479))
    first, second = c.split_shares(NS, data)
    assert len(first) == len(second) == c.SHARE_SIZE
    assert first[:29] == NS and first[29] == 0x01 and first[30:34] == (479).to_bytes(4, "big")
    assert first[34:] == data[:478]
    assert second[:29] == NS and second[29] == 0x00
    assert second[30:31] == data[478:] and second[31:] == bytes(481)


@pytest.mark.parametrize(("n", "width"), [(1, 1), (64, 1), (65, 2), (128, 2), (129, 4), (256, 4), (320, 8),
                                          (4134, 128)])
def test_subtree_width(n: int, width: int) -> None:
    assert c.subtree_width(n) == width


def test_min_square_caps_width() -> None:
    # ceil(n/64) would ask for more, but the blob's minimum square (a power of two >= ceil(sqrt(n))) caps it.
    assert c.blob_min_square_size(0) == 1
    assert c.blob_min_square_size(4) == 2
    assert c.blob_min_square_size(5) == 4
    assert c.subtree_width(5, threshold=1) == 4


def test_mountain_ranges() -> None:
    assert c.mountain_range_sizes(11, 4) == [4, 4, 2, 1]
    assert c.mountain_range_sizes(65, 2) == [2] * 32 + [1]
    assert c.mountain_range_sizes(7, 8) == [4, 2, 1]
    assert c.mountain_range_sizes(1, 1) == [1]


def test_subtree_roots_for_65_shares() -> None:
    v = next(v for v in VECTORS if v["share_count"] == 65)
    roots = c.subtree_roots(bytes.fromhex(v["namespace_hex"]), bytes.fromhex(v["data_hex"]))
    assert len(roots) == 33 and all(len(r) == c.NMT_ROOT_SIZE for r in roots)


def test_single_root_is_hashed() -> None:
    roots = c.subtree_roots(NS, b"hello")
    assert len(roots) == 1
    assert c.blob_commitment(NS, b"hello") != roots[0][-32:]
    assert len(c.blob_commitment(NS, b"hello")) == 32


def test_nmt_ignore_max_namespace() -> None:
    parity = b"\xff" * 29
    root = c.nmt_root([(NS, b"a"), (parity, b"b")])
    assert root[:29] == NS and root[29:58] == NS
    root = c.nmt_root([(NS, b"a"), (NS[:-1] + b"\x02", b"b")])
    assert root[:29] == NS and root[29:58] == NS[:-1] + b"\x02"


def test_reject_empty_data() -> None:
    with pytest.raises(ValueError, match="empty"):
        c.blob_commitment(NS, b"")
    with pytest.raises(ValueError, match="empty"):
        c.share_count(0)


@pytest.mark.parametrize("ns", [b"", bytes(28), bytes(30), bytes(33)])
def test_reject_namespace_length(ns: bytes) -> None:
    with pytest.raises(ValueError, match="29 bytes"):
        c.blob_commitment(ns, b"x")


@pytest.mark.parametrize("version", [1, 2, -1])
def test_reject_share_version(version: int) -> None:
    with pytest.raises(ValueError, match="share version"):
        c.blob_commitment(NS, b"x", version)


def test_big_blob_is_fast() -> None:
    data = os.urandom(int(1.9 * 1024 * 1024))
    start = time.perf_counter()
    commitment = c.blob_commitment(NS, data)
    elapsed = time.perf_counter() - start
    assert len(commitment) == 32
    assert elapsed < 1.0, f"1.9 MiB commitment took {elapsed:.3f}s"
