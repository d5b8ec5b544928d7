"""Build a coordinator's DA layers from its configuration.

Primary: the Mock DA (USE_MOCK_DA=true) or Celestia. With ENABLE_FALLBACK: the QuorumDA over
QUORUM_VALIDATORS (secondary) and the blob store at EMERGENCY_DA_URL (emergency); either or both.
Followed logs: the primary, every validator's own log, the emergency log.
"""

from __future__ import annotations

from dataclasses import dataclass

from node import identity
from node.config import Config
from node.da.base import DALayer
from node.da.blobstore_client import DEFAULT_NAMESPACE, BlobStoreDA
from node.da.celestia import CelestiaDA
from node.da.mock import MockDA
from node.da.quorum import QuorumDA
from node.da.status import EMERGENCY, PRIMARY


@dataclass
class Layers:
    primary: DALayer
    secondary: DALayer | None
    emergency: DALayer | None
    followed: dict[str, DALayer]


def build_layers(cfg: Config) -> Layers:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)  # the Mock DA file lives there by default
    if cfg.use_mock_da:
        primary: DALayer = MockDA(cfg.mock_da_file if cfg.mock_da_path != ":memory:" else ":memory:")
    else:
        primary = CelestiaDA.from_config(cfg)
    namespace = cfg.da_namespace or DEFAULT_NAMESPACE
    signer = identity.load_or_create(cfg.data_dir)  # blob stores with a writer list take our signed writes
    timeout_s = cfg.da_timeout_ms / 1000
    followed: dict[str, DALayer] = {PRIMARY: primary}
    secondary = emergency = None
    if cfg.enable_fallback and cfg.quorum_validators:
        quorum = QuorumDA(cfg.quorum_validators, threshold_percent=cfg.quorum_threshold,
                          signature_timeout_s=cfg.quorum_signature_timeout_ms / 1000,
                          public_keys=cfg.quorum_validator_keys or None, namespace=namespace, timeout_s=timeout_s,
                          signer=signer)
        secondary = quorum
        for validator in quorum.validators():
            followed[validator.name] = validator
    if cfg.enable_fallback and cfg.emergency_da_url:
        emergency = BlobStoreDA(cfg.emergency_da_url, name=EMERGENCY, namespace=namespace,
                                public_key=cfg.emergency_da_key, timeout_s=timeout_s, signer=signer)
        followed[EMERGENCY] = emergency
    return Layers(primary, secondary, emergency, followed)
