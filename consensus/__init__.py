"""Threshold signing and receipt consensus.

- ``group``: the Ed25519 group and scalar field on libsodium (RFC 9591 serializations and validation).
- ``frost``: FROST(Ed25519, SHA-512) per RFC 9591 (signing, share verification, aggregation, identifiable
  abort, trusted-dealer keys for tests and tools) and ``KeyShare``.
- ``dkg`` / ``dkg_messages``: Pedersen DKG with proofs of knowledge and a confirmation round, as a pure state
  machine, and its signed wire messages.
- ``keystore``: the key share encrypted at rest.

The receipt engine is not here yet.
"""
