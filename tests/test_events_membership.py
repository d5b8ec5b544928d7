"""Which member may sign which events (issue 8 §4.2): the ids bound to member keys by the configuration."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from node.config import Config, ConfigError, load

K0, K1, K2 = "aa" * 32, "bb" * 32, "cc" * 32


def test_cluster_peers_bind_every_member_key_to_its_id() -> None:
    cfg = load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0",
                "CLUSTER_PEERS": f"c0={K0}@127.0.0.1:9000,c1={K1}@127.0.0.1:9001"})
    assert dict(cfg.cluster_member_ids) == {bytes.fromhex(K0): "c0", bytes.fromhex(K1): "c1"}


def test_cluster_member_keys_take_bare_keys_and_id_equals_key_entries() -> None:
    cfg = load({"USE_MOCK_DA": "true", "CLUSTER_MEMBER_KEYS": f"{K0}, c1={K1} ,c2 = {K2}"})
    assert cfg.cluster_member_keys == (bytes.fromhex(K0), bytes.fromhex(K1), bytes.fromhex(K2))
    assert dict(cfg.cluster_member_ids) == {bytes.fromhex(K1): "c1", bytes.fromhex(K2): "c2"}


@pytest.mark.parametrize("value", [f"c1={K1},c2={K1}", f"c1={K1},c1={K2}", f"bad id={K1}", "c1=abcd"])
def test_conflicting_or_malformed_bindings_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="CLUSTER_MEMBER_KEYS"):
        load({"USE_MOCK_DA": "true", "CLUSTER_MEMBER_KEYS": value})


def test_a_binding_may_not_contradict_the_cluster_config() -> None:
    env = {"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "CLUSTER_PEERS": f"c0={K0}@127.0.0.1:9000"}
    assert dict(load({**env, "CLUSTER_MEMBER_KEYS": f"c0={K0},c1={K1}"}).cluster_member_ids) == {
        bytes.fromhex(K0): "c0", bytes.fromhex(K1): "c1"}
    with pytest.raises(ConfigError, match="CLUSTER_MEMBER_KEYS"):
        load({**env, "CLUSTER_MEMBER_KEYS": f"c9={K0}"})


def test_the_coordinator_hands_the_bindings_to_every_consumer(make_config: Callable[..., Config]) -> None:
    from node.coordinator import Coordinator
    from node.da.mock import MockDA

    coord = Coordinator(make_config("b", CLUSTER_MEMBER_KEYS=f"a={K0},{K1}"), MockDA())
    try:
        assert coord.member_ids == {bytes.fromhex(K0): "a"}
        assert all(c.member_ids == coord.member_ids for c in coord.consumers.values())
        assert coord.members == frozenset({coord.public_key, bytes.fromhex(K0), bytes.fromhex(K1)})
    finally:
        coord.outbox.close()


def test_a_coordinator_whose_own_key_is_bound_to_another_id_refuses_to_start(
        make_config: Callable[..., Config]) -> None:
    from node import identity
    from node.coordinator import Coordinator
    from node.da.mock import MockDA

    own = bytes(identity.load_or_create(make_config("b").data_dir).verify_key).hex()
    with pytest.raises(ConfigError, match="CLUSTER_MEMBER_KEYS"):
        Coordinator(make_config("b", CLUSTER_MEMBER_KEYS=f"someone-else={own}"), MockDA())
    coord = Coordinator(make_config("b", CLUSTER_MEMBER_KEYS=f"b={own}"), MockDA())
    coord.outbox.close()
