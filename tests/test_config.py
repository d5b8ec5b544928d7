"""Configuration: the seed's defaults, our variables, and one clear error per bad value."""

from __future__ import annotations

import pytest

from node.config import ConfigError, load


def test_defaults_follow_the_seed() -> None:
    cfg = load({"USE_MOCK_DA": "true"})
    assert (cfg.host, cfg.port, cfg.da_network) == ("127.0.0.1", 8080, "local")
    assert (cfg.da_timeout_ms, cfg.da_retry_count, cfg.da_retry_delay_ms) == (30000, 3, 1000)
    assert (cfg.enable_fallback, cfg.fallback_da_type, cfg.quorum_threshold) == (False, "none", 67)
    assert cfg.quorum_signature_timeout_ms == 5000
    assert (cfg.reconcile_batch_size, cfg.reconcile_retry_delay_ms, cfg.reconcile_max_retries) == (10, 1000, 3)
    assert cfg.reconcile_parallel is False
    assert cfg.coordinator_id == "coordinator-0"
    assert str(cfg.data_dir) == ".dsdn/coordinator-0"
    assert cfg.stats_ttl_ms == 300_000 and cfg.api_token is None


def test_mock_needs_no_da_variables_but_celestia_does() -> None:
    load({"USE_MOCK_DA": "true"})
    with pytest.raises(ConfigError) as err:
        load({})
    assert err.value.var == "DA_RPC_URL"
    with pytest.raises(ConfigError) as err:
        load({"DA_RPC_URL": "http://localhost:26658"})
    assert err.value.var == "DA_NAMESPACE"
    valid = "00" * 19 + "0123456789abcdef0123"
    with pytest.raises(ConfigError) as err:
        load({"DA_RPC_URL": "http://x:1", "DA_NAMESPACE": valid, "DA_NETWORK": "mainnet"})
    assert err.value.var == "DA_AUTH_TOKEN"
    cfg = load({"DA_RPC_URL": "http://x:1", "DA_NAMESPACE": valid})
    assert cfg.da_namespace == bytes.fromhex(valid)


def test_data_dir_follows_the_id_and_host_names_are_accepted() -> None:
    cfg = load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c-7", "COORDINATOR_HOST": "localhost"})
    assert str(cfg.data_dir) == ".dsdn/c-7" and cfg.host == "localhost"
    assert load({"USE_MOCK_DA": "true", "COORDINATOR_HOST": "::1"}).host == "::1"
    assert load({"USE_MOCK_DA": "true", "COORDINATOR_HOST": "coord-1.example.org",
                 "COORDINATOR_API_TOKEN": "t"}).host == "coord-1.example.org"


@pytest.mark.parametrize("token", ["s3crét", "two words", "tab\there"])
def test_a_token_that_cannot_travel_in_a_header_is_refused_without_showing_it(token: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({"USE_MOCK_DA": "true", "COORDINATOR_API_TOKEN": token})
    assert err.value.var == "COORDINATOR_API_TOKEN" and "visible ASCII" in str(err.value)
    assert token not in str(err.value)
    assert load({"USE_MOCK_DA": "true", "COORDINATOR_API_TOKEN": "Ab0-._~+/=!#$%&*^`|"}).api_token is not None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "coord-1.example.org", "2001:db8::1"])
def test_a_non_loopback_bind_without_a_token_is_refused_unless_meant(host: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({"USE_MOCK_DA": "true", "COORDINATOR_HOST": host})
    message = str(err.value)
    assert err.value.var == "COORDINATOR_API_TOKEN" and "\n" not in message
    assert f"COORDINATOR_HOST={host} is not a loopback address" in message and "ALLOW_UNAUTHENTICATED=true" in message
    assert load({"USE_MOCK_DA": "true", "COORDINATOR_HOST": host, "COORDINATOR_API_TOKEN": "t"}).host == host
    cfg = load({"USE_MOCK_DA": "true", "COORDINATOR_HOST": host, "ALLOW_UNAUTHENTICATED": "true"})
    assert cfg.host == host and cfg.api_token is None and cfg.allow_unauthenticated is True
    with pytest.raises(ConfigError) as err:
        load({"USE_MOCK_DA": "true", "COORDINATOR_HOST": host, "ALLOW_UNAUTHENTICATED": "false"})
    assert err.value.var == "COORDINATOR_API_TOKEN"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST"])
def test_loopback_binds_need_no_token(host: str) -> None:
    cfg = load({"USE_MOCK_DA": "true", "COORDINATOR_HOST": host})
    assert cfg.host == host and cfg.api_token is None and cfg.allow_unauthenticated is False


def test_member_keys_parse() -> None:
    cfg = load({"USE_MOCK_DA": "true", "CLUSTER_MEMBER_KEYS": "aa" * 32 + ", " + "bb" * 32})
    assert cfg.cluster_member_keys == (b"\xaa" * 32, b"\xbb" * 32)


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("COORDINATOR_PORT", "70000", "integer from 0 to 65535"),
        ("COORDINATOR_PORT", "eighty", "integer from 0 to 65535"),
        ("COORDINATOR_HOST", "bad host!", "IP address or a host name"),
        ("COORDINATOR_ID", "has space", "1-128 characters"),
        ("DA_NETWORK", "testnet", "mainnet, mocha, local"),
        ("USE_MOCK_DA", "maybe", "true or false"),
        ("QUORUM_THRESHOLD", "0", "from 1 to 100"),
        ("QUORUM_THRESHOLD", "101", "from 1 to 100"),
        ("RECONCILE_BATCH_SIZE", "0", "from 1 to"),
        ("DA_TIMEOUT_MS", "-5", "integer"),
        ("FALLBACK_DA_TYPE", "carrier-pigeon", "none, quorum, emergency"),
        ("STATS_TTL_MS", "0", "integer"),
        ("DA_START_HEIGHT", "0", "from 1 to"),
        ("DA_STORAGE_WINDOW_S", "-1", "from 0 to"),
        ("CLUSTER_MEMBER_KEYS", "abcd", "64 hex characters"),
        ("DA_NAMESPACE", "zz", "dsdn namespace"),
        ("DA_NAMESPACE", "0" * 58, "reserves"),
        ("EMERGENCY_DA_URL", "ftp://x", "http:// or https://"),
        ("ALLOW_UNAUTHENTICATED", "sure", "true or false"),
        ("DA_GAS_PRICE", "0", "above 0, or -1"),  # (sent as a price: a fee-less transaction; a reviewer's find)
        ("DA_GAS_PRICE", "-0.5", "above 0, or -1"),
    ],
)
def test_bad_values_name_the_variable_the_value_and_what_is_expected(var: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({"USE_MOCK_DA": "true", var: value})
    assert err.value.var == var
    message = str(err.value)
    assert message.startswith(f"{var}={value!r}: expected") and expected in message


def test_fallback_consistency_rules() -> None:
    with pytest.raises(ConfigError) as err:
        load({"USE_MOCK_DA": "true", "FALLBACK_DA_TYPE": "quorum"})
    assert err.value.var == "ENABLE_FALLBACK"
    with pytest.raises(ConfigError) as err:
        load({"USE_MOCK_DA": "true", "ENABLE_FALLBACK": "true", "FALLBACK_DA_TYPE": "quorum"})
    assert err.value.var == "QUORUM_VALIDATORS"
    cfg = load({"USE_MOCK_DA": "true", "ENABLE_FALLBACK": "1", "FALLBACK_DA_TYPE": "Quorum",
                "QUORUM_VALIDATORS": " http://a:1, ,https://b:2 "})
    assert cfg.quorum_validators == ("http://a:1", "https://b:2") and cfg.fallback_da_type == "quorum"
    # fallback on with no fallback layer started with the primary alone, unsaid (a reviewer's run)
    with pytest.raises(ConfigError) as err:
        load({"USE_MOCK_DA": "true", "ENABLE_FALLBACK": "true"})
    assert err.value.var == "ENABLE_FALLBACK" and "QUORUM_VALIDATORS and/or EMERGENCY_DA_URL" in str(err.value)
    assert load({"USE_MOCK_DA": "true", "ENABLE_FALLBACK": "true", "EMERGENCY_DA_URL": "http://e:1"}).enable_fallback


K0, K1 = "aa" * 32, "bb" * 32


def test_cluster_members_from_cluster_peers_and_from_a_toml_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0",
                "CLUSTER_PEERS": f"c0={K0}@127.0.0.1:9200, c1={K1}@[::1]:9201", "CLUSTER_ID": "prod-1"})
    assert [(p.id, p.host, p.port) for p in cfg.peers] == [("c0", "127.0.0.1", 9200), ("c1", "::1", 9201)]
    assert cfg.cluster_id == "prod-1" and set(cfg.cluster_member_keys) == {bytes.fromhex(K0), bytes.fromhex(K1)}
    toml = tmp_path / "cluster.toml"
    toml.write_text(f'cluster_id = "from-file"\n[[member]]\nid = "c0"\npublic_key = "{K0}"\npeer_address = '
                    f'"10.0.0.1:9200"\n[[member]]\nid = "c1"\npublic_key = "{K1}"\npeer_address = "10.0.0.2:9200"\n')
    cfg = load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c1", "CLUSTER_CONFIG": str(toml)})
    assert cfg.cluster_id == "from-file" and [p.host for p in cfg.peers] == ["10.0.0.1", "10.0.0.2"]
    assert load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c1", "CLUSTER_CONFIG": str(toml),
                 "CLUSTER_ID": "override"}).cluster_id == "override"


@pytest.mark.parametrize(
    ("env", "var", "expected"),
    [
        ({"CLUSTER_PEERS": f"c0={K0}@127.0.0.1:9200"}, "COORDINATOR_ID", "one of the cluster members: c0"),
        ({"COORDINATOR_ID": "c0", "CLUSTER_PEERS": "c0=abcd@127.0.0.1:9200"}, "CLUSTER_PEERS", "64 hex"),
        ({"COORDINATOR_ID": "c0", "CLUSTER_PEERS": f"c0={K0}@127.0.0.1"}, "CLUSTER_PEERS", "host:port"),
        ({"COORDINATOR_ID": "c0", "CLUSTER_PEERS": f"c0={K0}@h:1,c0={K1}@h:2"}, "CLUSTER_PEERS", "distinct"),
        ({"COORDINATOR_ID": "c0", "CLUSTER_CONFIG": "/nonexistent.toml"}, "CLUSTER_CONFIG", "readable TOML"),
        ({"COORDINATOR_ID": "c0", "CLUSTER_PEERS": f"c0={K0}@h:1", "CLUSTER_ID": "bad id"}, "CLUSTER_ID", "1-128"),
    ],
)
def test_bad_cluster_membership_is_refused(env: dict[str, str], var: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({"USE_MOCK_DA": "true", **env})
    assert err.value.var == var and expected in str(err.value)


def _members(n: int) -> str:
    return ",".join(f"c{i}={i + 1:02x}{'00' * 31}@127.0.0.1:{9200 + i}" for i in range(n))


@pytest.mark.parametrize(("n", "floor"), [(2, 2), (3, 2), (4, 3), (5, 4), (6, 4), (7, 5), (9, 6), (10, 7)])
def test_dkg_threshold_from_the_floor_to_n(n: int, floor: int) -> None:
    """DKG_THRESHOLD: floor((n + f)/2) + 1 (f = floor((n - 1)/3)) to n (issue "Hardening" §2)."""
    env = {"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "CLUSTER_PEERS": _members(n)}
    assert load(env).dkg_threshold is None
    for t in range(floor, n + 1):
        assert load({**env, "DKG_THRESHOLD": str(t)}).dkg_threshold == t
    for t in (floor - 1, n + 1):
        with pytest.raises(ConfigError) as err:
            load({**env, "DKG_THRESHOLD": str(t)})
        assert err.value.var == "DKG_THRESHOLD" and f"an integer from {floor} to {n} (n = {n} members" in str(err.value)


def test_dkg_threshold_below_the_floor_is_a_configuration_error() -> None:
    """4 of 7 is a strict majority but below the floor 5 (f = 2): refused, naming the variable, the value and the
    allowed range (the coordinator prints this one line and exits 2)."""
    env = {"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "CLUSTER_PEERS": _members(7)}
    with pytest.raises(ConfigError) as err:
        load({**env, "DKG_THRESHOLD": "4"})
    assert err.value.var == "DKG_THRESHOLD" and err.value.value == "4"
    assert str(err.value) == ("DKG_THRESHOLD='4': expected an integer from 5 to 7 (n = 7 members: at least "
                              "floor((n + f)/2) + 1 with f = floor((n - 1)/3) = 2 faulty members tolerated, at most n)")
    with pytest.raises(ConfigError, match="DKG_THRESHOLD='five': expected an integer from 5 to 7"):
        load({**env, "DKG_THRESHOLD": "five"})
    assert load({**env, "DKG_THRESHOLD": "5"}).dkg_threshold == 5


@pytest.mark.parametrize(("var", "value", "extra"), [
    ("DA_RPC_URL", "http://celestia:26658x", {}), ("DA_RPC_URL", "http://127.0.0.1:99999", {}),
    ("DA_RPC_URL", "http://127.0.0.1:0", {}), ("DA_RPC_URL", "ftp://celestia:26658", {}),
    ("EMERGENCY_DA_URL", "http://x:abc", {"ENABLE_FALLBACK": "true", "FALLBACK_DA_TYPE": "emergency"}),
    ("QUORUM_VALIDATORS", "http://v1:8080,not-a-url", {"ENABLE_FALLBACK": "true", "FALLBACK_DA_TYPE": "quorum"}),
    # a host name that is none ("a..b", a label of 64 characters) or a control character: the HTTP client failed
    # at start with a UnicodeError or InvalidURL traceback (a reviewer's reproductions)
    ("DA_RPC_URL", "http://a..b:9", {}), ("DA_RPC_URL", f"http://{'a' * 64}.example:9", {}),
    ("DA_RPC_URL", "http://127.0.0.1:9/\x7f", {}),
    # digits and dots that are no IPv4 address: taken as a host name, then refused by the HTTP client at start
    ("DA_RPC_URL", "http://10.0.0.01:26658", {}), ("DA_RPC_URL", "http://127.0.0.256:26658", {}),
    ("EMERGENCY_DA_URL", "http://10.0.0.01:9", {"ENABLE_FALLBACK": "true", "FALLBACK_DA_TYPE": "emergency"}),
    ("QUORUM_VALIDATORS", "http://127.0.0.1:9,http://127.0.0.256:9",
     {"ENABLE_FALLBACK": "true", "FALLBACK_DA_TYPE": "quorum"}),
])
def test_a_url_the_http_client_cannot_use_is_a_configuration_error(var: str, value: str,
                                                                    extra: dict[str, str]) -> None:
    """These passed a prefix check, then failed in the HTTP client at start: a traceback and exit 1, which systemd
    restarts for ever (exit 2, a configuration error, it does not)."""
    env = {"DA_RPC_URL": "http://127.0.0.1:26658", "DA_NAMESPACE": "00" * 19 + "0123456789abcdef0123", **extra,
           var: value}
    with pytest.raises(ConfigError) as err:
        load(env)
    assert err.value.var == var and "port 1-65535" in str(err.value)
    assert load({**env, var: value.replace("not-a-url", "http://v2:8080").replace("26658x", "26658")
                 .replace("99999", "9999").replace(":0", ":1").replace("ftp", "https").replace(":abc", ":80")
                 .replace("a..b", "a.b").replace("a" * 64, "a" * 63).replace("\x7f", "")
                 .replace("0.01:", "0.1:").replace(".256:", ".255:")})


K2 = "03" * 32


@pytest.mark.parametrize(("env", "var", "expected"), [
    ({"CLUSTER_PEERS": f"c0={K0}@h:\u00b2"}, "CLUSTER_PEERS", "host:port"),  # "²" passed isdigit(), int() failed
    ({"CLUSTER_PEERS": f"c0={K0}@a b:80"}, "CLUSTER_PEERS", "host:port"),
    ({"CLUSTER_PEERS": f"c0={K0}@http://x:80"}, "CLUSTER_PEERS", "host:port"),
    ({"CLUSTER_PEERS": f"c0={K0}@[]:80"}, "CLUSTER_PEERS", "host:port"),
    ({"CLUSTER_PEERS": f"c0={K0}@::1:80"}, "CLUSTER_PEERS", "[IPv6]:port"),
    ({"DA_AUTH_TOKEN": "t\u00f6k\u00e9n"}, "DA_AUTH_TOKEN", "visible ASCII"),
    ({"PEER_HOST": "[::1]"}, "PEER_HOST", "an IP address or a host name"),
    ({"QUORUM_VALIDATORS": "http://v1:1,http://V1:1/", "ENABLE_FALLBACK": "true", "FALLBACK_DA_TYPE": "quorum"},
     "QUORUM_VALIDATORS", "distinct"),
    # one validator spelt two ways: a quorum of 2 could never be met
    ({"QUORUM_VALIDATORS": "http://[::1]:7000,http://[0:0::1]:7000", "ENABLE_FALLBACK": "true",
      "FALLBACK_DA_TYPE": "quorum"}, "QUORUM_VALIDATORS", "distinct"),
    # two members at one address: c0 dialed itself as c1 for ever, and c1 was never reached
    ({"CLUSTER_PEERS": f"c0={K0}@127.0.0.1:9200,c1={K1}@127.0.0.1:9200"}, "CLUSTER_PEERS", "distinct member addr"),
    ({"CLUSTER_PEERS": f"c0={K0}@[::1]:9200,c1={K1}@[0::1]:9200"}, "CLUSTER_PEERS", "distinct member addr"),
    ({"CLUSTER_PEERS": f"c0={K0}@Host.Example:9200,c1={K1}@host.example.:9200"}, "CLUSTER_PEERS",
     "distinct member addr"),
    ({"CLUSTER_PEERS": f"c0={K0}@999.999.999.999:9200"}, "CLUSTER_PEERS", "host:port"),
    ({"COORDINATOR_HOST": "999.1.1.1"}, "COORDINATOR_HOST", "an IP address or a host name"),
    # "." and "..": the data folder .dsdn/.. is the working directory (every file of the coordinator written there)
    ({"COORDINATOR_ID": ".."}, "COORDINATOR_ID", "1-128"), ({"COORDINATOR_ID": "."}, "COORDINATOR_ID", "1-128"),
    ({"CLUSTER_PEERS": f"..={K0}@127.0.0.1:9200"}, "CLUSTER_PEERS", "member ids"),
    ({"QUORUM_VALIDATORS": "http://v1:1,http://v2:1", "QUORUM_VALIDATOR_KEYS": f"{K2},{K2}"},
     "QUORUM_VALIDATOR_KEYS", "distinct"),
])
def test_values_that_failed_later_with_a_traceback_are_configuration_errors(env: dict[str, str], var: str,
                                                                             expected: str) -> None:
    """Each of these passed the configuration and then stopped the process with a traceback and exit 1 (systemd
    restarts that), or left a peer link that could never come up (a reviewer's reproductions)."""
    with pytest.raises(ConfigError) as err:
        load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", **({} if "CLUSTER_PEERS" in env else
                                                                 {"CLUSTER_PEERS": f"c0={K0}@127.0.0.1:9200"}), **env})
    assert err.value.var == var and expected in str(err.value)
    assert "t\u00f6k" not in str(err.value)  # a token is never shown


def test_ipv6_peers_and_unusual_but_valid_values_are_taken(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from protocol.manager import host_port

    # names resolvers take: underscores (container names), a trailing dot (a fully qualified name); the same store
    # is told by scheme, host and port, its path's case kept (a reviewer's finding: all of these were refused)
    ok = load({"DA_RPC_URL": "http://celestia_node.example.com.:26658",
               "DA_NAMESPACE": "00" * 19 + "0123456789abcdef0123", "PEER_HOST": "coord_0", "COORDINATOR_ID": "c0",
               "CLUSTER_PEERS": f"c0={K0}@coord_0.local.:9200",
               "QUORUM_VALIDATORS": "http://v1:80/X,http://v1/x"})
    assert ok.peer_host == "coord_0" and ok.peers[0].host == "coord_0.local." and len(ok.quorum_validators) == 2
    with pytest.raises(ConfigError, match="distinct"):
        load({"USE_MOCK_DA": "true", "QUORUM_VALIDATORS": "http://v1:80/x,http://V1/x/"})
    # short IPv4 forms the system reads as addresses (127.1 is 127.0.0.1) stay taken (a regression review)
    short = load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "COORDINATOR_HOST": "127.1",
                  "CLUSTER_PEERS": f"c0={K0}@127.1:9200,c1={K1}@10.1:9201"})
    assert [p.host for p in short.peers] == ["127.1", "10.1"]
    assert load({"DA_RPC_URL": "http://10.1:26658", "DA_NAMESPACE": "00" * 19 + "0123456789abcdef0123"})

    cfg = load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "PEER_HOST": "::1",
                "CLUSTER_PEERS": f"c0={K0}@[::1]:9200,c1={K1}@[fe80::1]:9201",
                "KEYSTORE_PASSPHRASE": "caf\udce9"})  # a Latin-1 "é" as Python reads it from the environment
    assert cfg.peer_host == "::1" and [host_port(p.host, p.port) for p in cfg.peers] == ["[::1]:9200",
                                                                                         "[fe80::1]:9201"]
    assert cfg.keystore_passphrase == b"caf\xe9"  # the bytes the operator gave
    toml = tmp_path / "latin1.toml"
    toml.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "CLUSTER_CONFIG": str(toml)})


def test_the_storage_window_is_a_week_unless_set() -> None:
    """On by default whatever DA_NETWORK says (it defaults to local: a real node's follower that did not set it went
    unprotected); the launchers of the local devnet, which never prunes, turn it off (a week-old chain refused new
    members: a reviewer's reproduction)."""
    assert load({"USE_MOCK_DA": "true"}).da_storage_window_s == 7 * 86400
    assert load({"USE_MOCK_DA": "true", "DA_STORAGE_WINDOW_S": "0"}).da_storage_window_s == 0


def test_a_cluster_larger_than_its_dkg_can_prove_liars_in_is_refused() -> None:
    """A DKG exclusion proof carries every participant's round one: from 48 members on (with t = n, 40), a liar's bad
    confirmation could not be proven within MAX_PROOF and could fail every session (a reviewer's finding). The
    largest cluster, at the largest threshold, still proves one; one member more is refused at configuration."""
    import os

    import nacl.signing

    from consensus import dkg
    from consensus.dkg import Complaint, Confirm, DkgParticipant
    from consensus.dkg_service import MAX_PROOF
    from node.config import MAX_MEMBERS

    n = t = MAX_MEMBERS
    keys = [nacl.signing.SigningKey(os.urandom(32)) for _ in range(n)]
    ids = dkg.assign_identifiers(bytes(k.verify_key) for k in keys)
    by_key = {bytes(k.verify_key): k for k in keys}
    session = os.urandom(32)
    round1 = [DkgParticipant(session, by_key[ids[i]], ids, t).round1[0] for i in sorted(ids)]
    context = dkg.session_context(session, t, ids)
    _, verifying = dkg._group_info(round1, t, ids)
    bad = Confirm(session, 1, round1[1].commitment[0], tuple(verifying.values()),
                  dkg._transcript(round1, context)).signed(by_key[ids[1]], context)
    complaint = Complaint(session, 2, 1, "bad_confirm", b"", b"", (bad, *round1)).signed(by_key[ids[2]], context)
    assert dkg.judge_complaint(complaint, context, ids, t)
    assert len(dkg.exclusion_proof(session, t, ids, complaint)) <= MAX_PROOF
    env = {"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0"}
    assert len(load({**env, "CLUSTER_PEERS": _members(MAX_MEMBERS)}).peers) == MAX_MEMBERS
    with pytest.raises(ConfigError, match=f"at most {MAX_MEMBERS} members"):
        load({**env, "CLUSTER_PEERS": _members(MAX_MEMBERS + 1)})


@pytest.mark.parametrize("value", ["\u0668\u0660\u0668\u0665", "1_8086", "0x1f90", "8080.0", "1e3"])
def test_an_integer_setting_is_ascii_digits(value: str) -> None:
    """COORDINATOR_PORT=٨٠٨٥ listened on 8085 and 1_8086 on 18086: int() takes both (a reviewer's finding); the
    query parameters refused them already."""
    with pytest.raises(ConfigError, match="an integer from"):
        load({"USE_MOCK_DA": "true", "COORDINATOR_PORT": value})
    assert load({"USE_MOCK_DA": "true", "COORDINATOR_PORT": " 8085 "}).port == 8085
