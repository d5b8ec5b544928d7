"""Celestia blob share commitments, computed locally (hashlib only).

This module owns the exact reproduction of Celestia's ``share_commitment`` for a blob: the value a
``MsgPayForBlobs`` carries and the node API returns as ``commitment``. It depends only on
(namespace, data, share version), so the coordinator can know a blob's commitment before posting it
and check what a DA node hands back. The steps (see ``shared/reference/celestia-commitment.md``):

1. split the data into 512-byte sparse shares (:func:`split_shares`);
2. cut the shares into a Merkle mountain range of subtrees whose width is :func:`subtree_width`
   (:func:`mountain_range_sizes`);
3. hash each subtree with a namespaced Merkle tree (:func:`nmt_root`, 90-byte roots);
4. combine the subtree roots with the RFC-6962 tree of cometbft (:func:`rfc6962_root`).

Only share version 0 is supported: version 1 puts the signer's address in the first share, which
callers here do not have. Namespace *policy* (which namespaces a blob may use) lives in
``node.da.namespace``; this module only requires a 29-byte namespace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from hashlib import sha256

NAMESPACE_SIZE = 29
SHARE_SIZE = 512
SHARE_INFO_BYTES = 1
SEQUENCE_LEN_BYTES = 4
SHARE_VERSION_ZERO = 0
#: Data bytes in the first share of a v0 blob: 512 - 29 (namespace) - 1 (info) - 4 (sequence length).
FIRST_SPARSE_SHARE_CONTENT_SIZE = SHARE_SIZE - NAMESPACE_SIZE - SHARE_INFO_BYTES - SEQUENCE_LEN_BYTES
#: Data bytes in every continuation share: 512 - 29 - 1.
CONTINUATION_SPARSE_SHARE_CONTENT_SIZE = SHARE_SIZE - NAMESPACE_SIZE - SHARE_INFO_BYTES
#: celestia-app ``appconsts.SubtreeRootThreshold`` (64 in every app version so far).
SUBTREE_ROOT_THRESHOLD = 64
#: Size of an NMT node/root: min namespace || max namespace || SHA-256 digest.
NMT_ROOT_SIZE = 2 * NAMESPACE_SIZE + 32

_MAX_NAMESPACE = b"\xff" * NAMESPACE_SIZE
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def _check_namespace(namespace: bytes) -> bytes:
    if not isinstance(namespace, bytes | bytearray | memoryview):
        raise TypeError(f"namespace must be bytes, not {type(namespace).__name__}")
    namespace = bytes(namespace)
    if len(namespace) != NAMESPACE_SIZE:
        raise ValueError(f"namespace must be {NAMESPACE_SIZE} bytes (version byte + 28-byte id), got {len(namespace)}")
    return namespace


def _check_share_version(share_version: int) -> None:
    if share_version == 1:
        raise ValueError("share version 1 is not supported: it embeds the blob signer in the first share; "
                         "use share version 0")
    if share_version != SHARE_VERSION_ZERO:
        raise ValueError(f"unsupported share version {share_version!r}; only share version 0 is supported")


def share_count(data_len: int) -> int:
    """Number of v0 sparse shares a blob of ``data_len`` bytes occupies (``data_len`` >= 1)."""
    if data_len <= 0:
        raise ValueError("blob data can not be empty")
    if data_len <= FIRST_SPARSE_SHARE_CONTENT_SIZE:
        return 1
    rest = data_len - FIRST_SPARSE_SHARE_CONTENT_SIZE
    return 1 + -(-rest // CONTINUATION_SPARSE_SHARE_CONTENT_SIZE)


def split_shares(namespace: bytes, data: bytes, share_version: int = 0) -> list[bytes]:
    """Split blob ``data`` into 512-byte sparse shares, as go-square's sparse share splitter does.

    First share: ``ns(29) || info(1) || sequence_len(4, big-endian) || data``; continuation shares:
    ``ns(29) || info(1) || data``; the last share is zero-padded. ``info = version << 1 | sequence_start``.
    """
    namespace = _check_namespace(namespace)
    _check_share_version(share_version)
    data = bytes(data)
    if not data:
        raise ValueError("blob data can not be empty")
    if len(data) > 0xFFFFFFFF:
        raise ValueError(f"blob data too large for a 4-byte sequence length: {len(data)} bytes")

    first_info = bytes([(share_version << 1) | 1])
    cont_info = bytes([share_version << 1])
    first = FIRST_SPARSE_SHARE_CONTENT_SIZE
    shares = [namespace + first_info + len(data).to_bytes(SEQUENCE_LEN_BYTES, "big") + data[:first]]
    cont_prefix = namespace + cont_info
    step = CONTINUATION_SPARSE_SHARE_CONTENT_SIZE
    shares.extend(cont_prefix + data[i : i + step] for i in range(first, len(data), step))
    last = shares[-1]
    if len(last) < SHARE_SIZE:
        shares[-1] = last + bytes(SHARE_SIZE - len(last))
    return shares


def _round_up_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _round_down_pow2(n: int) -> int:
    """Largest power of two <= n (n >= 1)."""
    if n < 1:
        raise ValueError(f"no power of two is <= {n}")
    return 1 << (n.bit_length() - 1)


def _largest_pow2_below(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2): the split point of NMT / RFC-6962 trees."""
    return 1 << ((n - 1).bit_length() - 1)


def blob_min_square_size(n_shares: int) -> int:
    """Smallest square width (a power of two) that fits ``n_shares`` shares; 1 for 0 shares."""
    return _round_up_pow2(math.isqrt(n_shares - 1) + 1 if n_shares > 0 else 0)


def subtree_width(n_shares: int, threshold: int = SUBTREE_ROOT_THRESHOLD) -> int:
    """Width of the commitment subtrees: ``min(roundUpPow2(ceil(n / threshold)), blob_min_square_size(n))``."""
    if n_shares < 0:
        raise ValueError(f"share count must be >= 0, got {n_shares}")
    w = _round_up_pow2(-(-n_shares // threshold))
    return min(w, blob_min_square_size(n_shares))


def mountain_range_sizes(total: int, max_tree_size: int) -> list[int]:
    """Merkle mountain range: chunks of ``max_tree_size`` while that many remain, then the rest in
    descending powers of two. ``mountain_range_sizes(11, 4) == [4, 4, 2, 1]``."""
    if max_tree_size < 1:
        raise ValueError(f"max tree size must be >= 1, got {max_tree_size}")
    sizes: list[int] = []
    while total > 0:
        size = max_tree_size if total >= max_tree_size else _round_down_pow2(total)
        sizes.append(size)
        total -= size
    return sizes


def _nmt_leaf(namespace: bytes, leaf: bytes) -> bytes:
    return namespace + namespace + sha256(_LEAF_PREFIX + namespace + leaf).digest()


def _nmt_node(left: bytes, right: bytes) -> bytes:
    n = NAMESPACE_SIZE
    lo = left[:n]
    # IgnoreMaxNamespace: a right child made only of max-namespace (parity) leaves does not raise max.
    hi = left[n : 2 * n] if right[:n] == _MAX_NAMESPACE else right[n : 2 * n]
    return lo + hi + sha256(_NODE_PREFIX + left + right).digest()


def _nmt_reduce(nodes: Sequence[bytes]) -> bytes:
    if len(nodes) == 1:
        return nodes[0]
    k = _largest_pow2_below(len(nodes))
    return _nmt_node(_nmt_reduce(nodes[:k]), _nmt_reduce(nodes[k:]))


def nmt_root(leaves: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Root (90 bytes) of a namespaced Merkle tree (SHA-256, 29-byte namespaces, IgnoreMaxNamespace)
    over ``(namespace, leaf_data)`` pairs, which must be in namespace order."""
    if not leaves:
        return bytes(2 * NAMESPACE_SIZE) + sha256(b"").digest()
    return _nmt_reduce([_nmt_leaf(ns, leaf) for ns, leaf in leaves])


def rfc6962_root(items: Sequence[bytes]) -> bytes:
    """cometbft ``merkle.HashFromByteSlices``: RFC-6962 Merkle root over ``items`` (32 bytes)."""
    if not items:
        return sha256(b"").digest()
    if len(items) == 1:
        return sha256(_LEAF_PREFIX + items[0]).digest()
    k = _largest_pow2_below(len(items))
    return sha256(_NODE_PREFIX + rfc6962_root(items[:k]) + rfc6962_root(items[k:])).digest()


def subtree_roots(namespace: bytes, data: bytes, share_version: int = 0) -> list[bytes]:
    """The blob's 90-byte subtree roots (celestia-node ``CommitmentProof.subtree_roots``)."""
    namespace = _check_namespace(namespace)
    shares = split_shares(namespace, data, share_version)
    roots: list[bytes] = []
    start = 0
    for size in mountain_range_sizes(len(shares), subtree_width(len(shares))):
        # Each NMT leaf is ns || share: go-square prepends the namespace to match the data square's NMT wrapper.
        roots.append(nmt_root([(namespace, share) for share in shares[start : start + size]]))
        start += size
    return roots


def blob_commitment(namespace: bytes, data: bytes, share_version: int = 0) -> bytes:
    """Celestia share commitment (32 bytes) of a blob with this 29-byte namespace, data and share version.

    Raises ValueError for a namespace that is not 29 bytes, empty data, or a share version other than 0.
    """
    return rfc6962_root(subtree_roots(namespace, data, share_version))
