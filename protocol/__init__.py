"""Peer wire protocol between coordinators: authenticated, encrypted links that carry typed messages.

- ``envelope``: messages as msgpack ``{v, type, body}``, a registry of typed schemas, strict size limits.
- ``handshake``: Ed25519-signed transcript over ephemeral X25519 keys, session keys, XChaCha20-Poly1305
  frames with counter nonces (a replayed, reordered or tampered frame closes the link).
- ``manager``: ``PeerManager``, one trio-websocket link per pair of members, heartbeats and RTT, bounded
  per-peer queues, broadcast, subscriptions, request/response.
- ``dispatch``: subscriptions and request/response over any transport, with bounded handlers.
- ``simnet``: the same interface in memory (drops, delays, duplicates, partitions) for simulation tests.

The layers above register their message types here (node stats: node/gossip.py; the DKG and receipt
signing: consensus/); this package imports nothing from node, consensus or api.
"""
