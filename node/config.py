"""Coordinator configuration, read once from the environment.

Owns: every variable of the seed's tables (with the seed's defaults) plus our own, their parsing and
validation. An invalid value raises ``ConfigError`` naming the variable, the value and what is
expected; the process entry turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from node.blob import MAX_BLOB_BYTES
from node.da.namespace import NamespaceError, parse_namespace
from node.naming import HOSTNAME_RE, ID_RE
from node.thresholds import faults_tolerated, threshold_floor

NETWORKS = ("mainnet", "mocha", "local")
FALLBACK_TYPES = ("none", "quorum", "emergency")
#: LOG_FORMAT: ``text`` (human-readable lines, the default) or ``json`` (one object per line, node.process)
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A variable has a value we cannot use."""

    def __init__(self, var: str, value: str | None, expected: str) -> None:
        self.var, self.value, self.expected = var, value, expected
        shown = "unset" if value is None else repr(value)
        super().__init__(f"{var}={shown}: expected {expected}")


@dataclass(frozen=True)
class PeerSpec:
    """One cluster member as the cluster config lists it."""

    id: str
    public_key: bytes
    host: str
    port: int


@dataclass(frozen=True)
class Config:
    # Primary DA (Celestia)
    da_rpc_url: str | None = None
    da_namespace: bytes | None = None
    da_auth_token: str | None = None
    da_network: str = "local"
    da_timeout_ms: int = 30000
    da_retry_count: int = 3
    da_retry_delay_ms: int = 1000
    da_gas_price: float = -1.0  # -1: the node estimates the gas price
    da_start_height: int = 1  # the first primary height read when no snapshot says where to resume
    da_storage_window_s: int = 7 * 86400  # older primary heights' empty answers are not trusted (0: archival node)
    use_mock_da: bool = False
    mock_da_path: str = ""  # "" = <data_dir>/mock-da.sqlite; ":memory:" = in-process only
    # Fallback DA
    enable_fallback: bool = False
    fallback_da_type: str = "none"
    quorum_validators: tuple[str, ...] = ()
    quorum_validator_keys: tuple[bytes, ...] = ()  # expected keys, in the order of quorum_validators
    quorum_validator: bool = False  # host the validator routes (/quorum/v1) in this coordinator
    quorum_threshold: int = 67
    quorum_signature_timeout_ms: int = 5000
    emergency_da_url: str | None = None
    emergency_da_key: bytes | None = None
    # Reconciliation
    reconcile_batch_size: int = 10
    reconcile_retry_delay_ms: int = 1000
    reconcile_max_retries: int = 3
    reconcile_parallel: bool = False
    reconcile_adopt_grace_ms: int = 30_000  # before re-posting another member's fallback blob to the primary
    # HTTP server and this coordinator
    host: str = "127.0.0.1"
    port: int = 8080
    coordinator_id: str = "coordinator-0"
    data_dir: Path = field(default_factory=lambda: Path(".dsdn/coordinator-0"))
    api_token: str | None = None
    allow_unauthenticated: bool = False  # ALLOW_UNAUTHENTICATED: no token on a non-loopback address is meant
    stats_ttl_ms: int = 300_000
    cluster_member_keys: tuple[bytes, ...] = ()
    # (key, member id) for the members whose id is known (CLUSTER_PEERS/CLUSTER_CONFIG, id=key entries of
    # CLUSTER_MEMBER_KEYS): their blobs may only carry events of that origin
    cluster_member_ids: tuple[tuple[bytes, str], ...] = ()
    max_inflight_writes: int = 1024  # writes waiting for the outbox commit at once; more get 503
    publish_interval_ms: int = 200
    snapshot_interval_ms: int = 30_000
    blob_max_bytes: int = MAX_BLOB_BYTES  # what this coordinator posts; it accepts up to MAX_BLOB_BYTES
    da_health_interval_ms: int = 5000
    da_health_timeout_ms: int = 1500  # deadline of one health check (no retries): slower is a failure
    cluster_id: str = "dsdn-local"
    peers: tuple[PeerSpec, ...] = ()  # every member, this coordinator included
    peer_host: str = "127.0.0.1"
    peer_port: int = 0  # 0: the port of our own entry in the cluster config
    peer_heartbeat_ms: int = 1000
    dkg_threshold: int | None = None  # None: floor(2n/3) + 1; else floor((n + f)/2) + 1 .. n (consensus.dkg)
    dkg_auto: bool = True
    dkg_timeout_ms: int = 30_000  # a DKG session's deadline; a member unreached for 10 × it is left out of a start
    keystore_passphrase: bytes | None = field(default=None, repr=False)
    # Receipt consensus
    receipt_batch_max: int = 256
    receipt_batch_wait_ms: int = 2
    receipt_epoch_grace: int = 1
    epoch_length_s: int = 3600
    da_failure_threshold: int = 3
    da_recovery_threshold: int = 2
    log_format: str = "text"  # LOG_FORMAT (logging is set up before the config is read: node.process)
    log_level: str = "INFO"  # LOG_LEVEL (likewise)

    @property
    def mock_da_file(self) -> str:
        return self.mock_da_path or str(self.data_dir / "mock-da.sqlite")


def _get(env: Mapping[str, str], var: str) -> str | None:
    value = env.get(var)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _bool(env: Mapping[str, str], var: str, default: bool) -> bool:
    raw = _get(env, var)
    if raw is None:
        return default
    low = raw.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ConfigError(var, raw, "true or false")


def _int(env: Mapping[str, str], var: str, default: int, lo: int, hi: int, why: str = "") -> int:
    """``var`` as an integer from ``lo`` to ``hi`` (``default`` when unset); ``why`` explains the range."""
    raw = _get(env, var)
    if raw is None:
        return default
    expected = f"an integer from {lo} to {hi}" + (f" ({why})" if why else "")
    if not re.fullmatch(r"[+-]?[0-9]{1,30}", raw.strip()):  # (int() also took "1_8086" and other scripts' digits)
        raise ConfigError(var, raw, expected)
    value = int(raw)
    if not lo <= value <= hi:
        raise ConfigError(var, raw, expected)
    return value


def _float(env: Mapping[str, str], var: str, default: float, lo: float, hi: float) -> float:
    raw = _get(env, var)
    if raw is None:
        return default
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", raw.strip()):  # (ASCII, no "_", no nan)
        raise ConfigError(var, raw, f"a number from {lo:g} to {hi:g}")
    value = float(raw)
    if not lo <= value <= hi:
        raise ConfigError(var, raw, f"a number from {lo:g} to {hi:g}")
    return value


def _choice(env: Mapping[str, str], var: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _get(env, var)
    if raw is None:
        return default
    if raw.lower() not in choices:
        raise ConfigError(var, raw, "one of " + ", ".join(choices))
    return raw.lower()


def log_format(env: Mapping[str, str]) -> str:
    """LOG_FORMAT: ``text`` (default) or ``json``; ConfigError otherwise."""
    return _choice(env, "LOG_FORMAT", "text", LOG_FORMATS)


def log_level(env: Mapping[str, str]) -> str:
    """LOG_LEVEL, any case: DEBUG, INFO (default), WARNING, ERROR or CRITICAL; ConfigError otherwise (``verbose``
    was ignored, silently, at INFO)."""
    return _choice(env, "LOG_LEVEL", "info", LOG_LEVELS).upper()


def _url(env: Mapping[str, str], var: str) -> str | None:
    raw = _get(env, var)
    if raw is not None:
        _check_url(raw, var)
    return raw


def _check_url(raw: str, var: str) -> None:
    """An http(s)://host[:port][/path] URL whose port, if any, is 1..65535 (``http://x:abc`` passed a prefix check,
    then failed in the HTTP client at start with a traceback and exit 1, which systemd restarts for ever)."""
    try:
        parts = urlsplit(raw)
        port = parts.port  # ValueError for a port that is no number or out of range
    except ValueError:
        parts, port = None, 0
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port == 0
            or not raw.isprintable() or any(c.isspace() for c in raw) or not _is_host(parts.hostname)
            or not _http_client_takes(raw)):
        # (a host name that is none, "a..b" say, passed and made the HTTP client fail at start with a traceback)
        raise ConfigError(var, raw, "an http:// or https:// URL (http(s)://host[:port][/path], port 1-65535)")


def _http_client_takes(url: str) -> bool:
    """Whether our HTTP client parses ``url`` (what it refuses failed the start with a traceback)."""
    import httpx

    try:
        httpx.URL(url)
        return True
    except httpx.InvalidURL:
        return False


def _is_host(host: str) -> bool:
    """An IP address (short IPv4 forms included, as the system reads them: 127.1 is 127.0.0.1) or a host name
    (``HOSTNAME_RE``); "a..b", a label of 64 characters, spaces, or digits and dots that are no address
    ("127.0.0.256" passed as a host name, and failed at start: a reviewer's find) are neither."""
    if _ip(host) is not None:
        return True
    return bool(HOSTNAME_RE.fullmatch(host)) and not re.fullmatch(r"[0-9.]+", host)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``host`` is, as the system reads it (``127.1``: 127.0.0.1), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _host(env: Mapping[str, str], var: str = "COORDINATOR_HOST") -> str:
    raw = _get(env, var)
    if raw is None:
        return "127.0.0.1"
    if not _is_host(raw):
        raise ConfigError(var, raw, "an IP address or a host name")
    return raw


def _same_store(url: str) -> tuple[str, str, int | None, str]:
    """What makes two validator URLs one store: scheme, host (any case), port (the scheme's default when absent),
    path (case kept) without a trailing slash."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, _same_host(parts.hostname or ""), port, parts.path.rstrip("/")


def _same_host(host: str) -> str:
    """One spelling per host: any case, no trailing dot, an IP address in its compressed form ([::1] and [0:0::1]
    were two validators, so a quorum of 2 could never be met: a reviewer's find). A name and an address of one host
    cannot be told apart without resolving it."""
    ip = _ip(host)
    return ip.compressed if ip is not None else host.lower().rstrip(".")


def _visible_ascii(token: str) -> bool:
    return all("!" <= c <= "~" for c in token)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1); a host name is not resolved, so any other
    name counts as reachable from the network."""
    if host.lower().rstrip(".") == "localhost":
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def _namespace(env: Mapping[str, str]) -> bytes | None:
    raw = _get(env, "DA_NAMESPACE")
    if raw is None:
        return None
    try:
        return parse_namespace(raw)
    except NamespaceError as exc:
        reason = str(exc).removeprefix("invalid Celestia namespace: ")
        raise ConfigError("DA_NAMESPACE", raw, f"a valid Celestia namespace; {reason}") from None


def _keys(env: Mapping[str, str], var: str) -> tuple[bytes, ...]:
    raw = _get(env, var)
    if raw is None:
        return ()
    keys = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not re.fullmatch(r"[0-9a-fA-F]{64}", part):
            raise ConfigError(var, raw, "comma-separated Ed25519 public keys, 64 hex characters each")
        keys.append(bytes.fromhex(part))
    return tuple(keys)


def _member_keys(env: Mapping[str, str], peers: tuple[PeerSpec, ...]) -> tuple[tuple[bytes, ...],
                                                                              tuple[tuple[bytes, str], ...]]:
    """CLUSTER_MEMBER_KEYS (entries ``key`` or ``id=key``) and the cluster's members: (every member key,
    the (key, id) bindings). A key bound to two ids, or an id to two keys, is refused."""
    var = "CLUSTER_MEMBER_KEYS"
    raw = _get(env, var)
    keys: list[bytes] = []
    bindings: dict[bytes, str] = {}
    ids: dict[str, bytes] = {}

    def bind(key: bytes, member_id: str) -> None:
        if bindings.setdefault(key, member_id) != member_id or ids.setdefault(member_id, key) != key:
            raise ConfigError(var, raw, f"one id per member key and one key per member id ({member_id!r} "
                              "conflicts with another entry or with the cluster config)")

    for peer in peers:
        bind(peer.public_key, peer.id)
    for part in (raw or "").split(","):
        member_id, _, key_hex = part.strip().rpartition("=")
        key_hex, member_id = key_hex.strip(), member_id.strip()
        if not key_hex:
            continue
        if not re.fullmatch(r"[0-9a-fA-F]{64}", key_hex) or (member_id and not ID_RE.fullmatch(member_id)):
            raise ConfigError(var, raw, "comma-separated Ed25519 public keys, 64 hex characters each, "
                              "optionally as id=key (id: 1-128 characters of A-Z a-z 0-9 . _ : -)")
        keys.append(bytes.fromhex(key_hex))
        if member_id:
            bind(keys[-1], member_id)
    all_keys = tuple(dict.fromkeys([*keys, *(p.public_key for p in peers)]))
    return all_keys, tuple(bindings.items())


def _peer_address(var: str, raw: str, address: str) -> tuple[str, int]:
    """(host, port) of ``host:port`` or ``[IPv6]:port``: the port in ASCII digits ("²" passed isdigit, then int()
    failed with a traceback), the host an IP address or a host name (anything was taken, and never connected)."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # an IPv6 address needs its brackets: "::1:9000" is ambiguous
        host = ""
    if not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535 or not _is_host(host):
        raise ConfigError(var, raw, f"peer addresses as host:port or [IPv6]:port, not {address!r}")
    return host, int(port)


def _peer(var: str, raw: str, node_id: object, key: object, address: object) -> PeerSpec:
    if not isinstance(node_id, str) or not ID_RE.fullmatch(node_id):
        raise ConfigError(var, raw, f"member ids of 1-128 characters of A-Z a-z 0-9 . _ : -, not {node_id!r}")
    if not isinstance(key, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", key):
        raise ConfigError(var, raw, f"member {node_id}: an Ed25519 public key of 64 hex characters")
    if not isinstance(address, str):
        raise ConfigError(var, raw, f"member {node_id}: a peer address host:port")
    return PeerSpec(node_id, bytes.fromhex(key), *_peer_address(var, raw, address))


#: The largest cluster: a DKG exclusion proof carries every participant's round-one message (~n·t·32 bytes) and
#: proofs are bounded (consensus.dkg_service.MAX_PROOF, 64 KiB): from 48 members on, a liar's bad confirmation could
#: no longer be proven, and it could fail every session (a reviewer's finding; 36 members with t = 36: 55 KB)
MAX_MEMBERS = 36


def _cluster(env: Mapping[str, str]) -> tuple[str | None, tuple[PeerSpec, ...]]:
    """(cluster id from the file, members) from CLUSTER_CONFIG (TOML) or CLUSTER_PEERS."""
    path = _get(env, "CLUSTER_CONFIG")
    raw = _get(env, "CLUSTER_PEERS")
    if path is not None:
        import tomllib

        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("CLUSTER_CONFIG", path, f"a readable TOML file in UTF-8 ({exc})") from None
        members = doc.get("member")
        if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
            raise ConfigError("CLUSTER_CONFIG", path, "[[member]] tables with id, public_key, peer_address")
        peers = tuple(_peer("CLUSTER_CONFIG", path, m.get("id"), m.get("public_key"), m.get("peer_address"))
                      for m in members)
        cluster_id = doc.get("cluster_id")
        if cluster_id is not None and not (isinstance(cluster_id, str) and ID_RE.fullmatch(cluster_id)):
            raise ConfigError("CLUSTER_CONFIG", path, "cluster_id: 1-128 characters of A-Z a-z 0-9 . _ : -")
    elif raw is not None:
        specs = []
        for part in (p.strip() for p in raw.split(",") if p.strip()):
            node_id, _, rest = part.partition("=")
            key, _, address = rest.partition("@")
            specs.append(_peer("CLUSTER_PEERS", raw, node_id.strip(), key.strip(), address.strip()))
        peers, cluster_id = tuple(specs), None
    else:
        return None, ()
    ids = [p.id for p in peers]
    if len(set(ids)) != len(ids) or len({p.public_key for p in peers}) != len(peers):
        raise ConfigError("CLUSTER_CONFIG" if path else "CLUSTER_PEERS", path or raw, "distinct member ids and keys")
    if len({(_same_host(p.host), p.port) for p in peers}) != len(peers):  # (a member dialed itself for ever)
        raise ConfigError("CLUSTER_CONFIG" if path else "CLUSTER_PEERS", path or raw, "distinct member addresses")
    if len(peers) > MAX_MEMBERS:
        raise ConfigError("CLUSTER_CONFIG" if path else "CLUSTER_PEERS", f"{len(peers)} members",
                          f"at most {MAX_MEMBERS} members (see node.config.MAX_MEMBERS)")
    return cluster_id, peers


def _dkg_threshold(env: Mapping[str, str], n: int) -> int | None:
    """DKG_THRESHOLD: from :func:`node.thresholds.threshold_floor` (n) to n for ``n`` cluster members (None: unset)."""
    if _get(env, "DKG_THRESHOLD") is None:
        return None
    lo = threshold_floor(max(n, 1))
    return _int(env, "DKG_THRESHOLD", lo, lo, max(lo, n),
                f"n = {n} members: at least floor((n + f)/2) + 1 with f = floor((n - 1)/3) = "
                f"{faults_tolerated(max(n, 1))} faulty members tolerated, at most n")


def load(env: Mapping[str, str]) -> Config:
    """Parse and validate the whole configuration; raise ConfigError on the first bad variable."""
    coordinator_id = _get(env, "COORDINATOR_ID") or "coordinator-0"
    if not ID_RE.fullmatch(coordinator_id):
        raise ConfigError("COORDINATOR_ID", coordinator_id, "1-128 characters of A-Z a-z 0-9 . _ : - (not . or ..)")
    use_mock = _bool(env, "USE_MOCK_DA", False)
    network = _choice(env, "DA_NETWORK", "local", NETWORKS)
    rpc_url = _url(env, "DA_RPC_URL")
    namespace = _namespace(env)
    token = _get(env, "DA_AUTH_TOKEN")
    if token is not None and not _visible_ascii(token):  # (it goes in a header: "é" crashed the client at start)
        raise ConfigError("DA_AUTH_TOKEN", "<not shown>", "visible ASCII characters only (no spaces): it is sent in "
                          "an HTTP header")
    if not use_mock:
        if rpc_url is None:
            raise ConfigError("DA_RPC_URL", None, "a Celestia node RPC URL (or set USE_MOCK_DA=true)")
        if namespace is None:
            raise ConfigError("DA_NAMESPACE", None, "58 hexadecimal characters (or set USE_MOCK_DA=true)")
        if network == "mainnet" and token is None:
            raise ConfigError("DA_AUTH_TOKEN", None, "an auth token (required with DA_NETWORK=mainnet)")

    enable_fallback = _bool(env, "ENABLE_FALLBACK", False)
    fallback_type = _choice(env, "FALLBACK_DA_TYPE", "none", FALLBACK_TYPES)
    if fallback_type != "none" and not enable_fallback:
        raise ConfigError("ENABLE_FALLBACK", env.get("ENABLE_FALLBACK"), f"true when FALLBACK_DA_TYPE={fallback_type}")
    validators_raw = _get(env, "QUORUM_VALIDATORS")
    validators = tuple(v.strip() for v in (validators_raw or "").split(",") if v.strip())
    for url in validators:
        _check_url(url, "QUORUM_VALIDATORS")
    if len({_same_store(url) for url in validators}) != len(validators):
        # one store listed twice raised the signatures needed, yet its signature counts once
        raise ConfigError("QUORUM_VALIDATORS", validators_raw, "distinct validator addresses")
    if enable_fallback and fallback_type == "quorum" and not validators:
        raise ConfigError("QUORUM_VALIDATORS", validators_raw, "comma-separated validator addresses")
    validator_keys = _keys(env, "QUORUM_VALIDATOR_KEYS")
    if len(set(validator_keys)) != len(validator_keys):  # (the quorum refused them later, with a traceback)
        raise ConfigError("QUORUM_VALIDATOR_KEYS", env.get("QUORUM_VALIDATOR_KEYS"), "distinct validator keys")
    if validator_keys and len(validator_keys) != len(validators):
        raise ConfigError("QUORUM_VALIDATOR_KEYS", env.get("QUORUM_VALIDATOR_KEYS"),
                          f"one key per QUORUM_VALIDATORS entry ({len(validators)}), in the same order")
    emergency_keys = _keys(env, "EMERGENCY_DA_KEY")
    if len(emergency_keys) > 1:
        raise ConfigError("EMERGENCY_DA_KEY", env.get("EMERGENCY_DA_KEY"), "one Ed25519 public key (64 hex)")
    emergency_url = _url(env, "EMERGENCY_DA_URL")
    if enable_fallback and fallback_type == "emergency" and emergency_url is None:
        raise ConfigError("EMERGENCY_DA_URL", None, "the emergency DA URL when FALLBACK_DA_TYPE=emergency")
    if enable_fallback and not validators and emergency_url is None:  # (it started with the primary alone, unsaid)
        raise ConfigError("ENABLE_FALLBACK", env.get("ENABLE_FALLBACK"),
                          "a fallback layer with it: QUORUM_VALIDATORS and/or EMERGENCY_DA_URL")

    api_token = _get(env, "COORDINATOR_API_TOKEN")
    if api_token is not None and not _visible_ascii(api_token):
        # it travels in a header, which the server decodes as latin-1 and clients encode as they like: a token
        # with "é" in it could never match, whatever the client sent
        raise ConfigError("COORDINATOR_API_TOKEN", "<not shown>", "visible ASCII characters only (no spaces): it "
                          "is sent in an HTTP header (Authorization: Bearer <token>)")
    if network == "mainnet" and not use_mock and api_token is None:
        raise ConfigError("COORDINATOR_API_TOKEN", None, "a token (mandatory with DA_NETWORK=mainnet)")
    host = _host(env)
    allow_unauthenticated = _bool(env, "ALLOW_UNAUTHENTICATED", False)
    if api_token is None and not allow_unauthenticated and not is_loopback(host):
        raise ConfigError("COORDINATOR_API_TOKEN", None, f"a token when COORDINATOR_HOST={host} is not a loopback "
                          "address: without one, POST /cluster/dkg and every write are open to the network "
                          "(set ALLOW_UNAUTHENTICATED=true if that is meant)")
    data_dir = Path(_get(env, "COORDINATOR_DATA_DIR") or f".dsdn/{coordinator_id}")
    file_cluster_id, peers = _cluster(env)
    if peers and coordinator_id not in {p.id for p in peers}:
        names = ", ".join(p.id for p in peers)
        raise ConfigError("COORDINATOR_ID", coordinator_id, f"one of the cluster members: {names}")
    cluster_id = _get(env, "CLUSTER_ID") or file_cluster_id or "dsdn-local"
    member_keys, member_ids = _member_keys(env, peers)
    if not ID_RE.fullmatch(cluster_id):
        raise ConfigError("CLUSTER_ID", cluster_id, "1-128 characters of A-Z a-z 0-9 . _ : -")
    gas_price = _float(env, "DA_GAS_PRICE", -1.0, -1.0, 1e6)
    if gas_price != -1.0 and gas_price <= 0:  # (0 was sent as a price: a fee-less transaction a node refuses)
        raise ConfigError("DA_GAS_PRICE", env.get("DA_GAS_PRICE"), "a price above 0, or -1 to let the node estimate it")

    storage_window_s = _int(env, "DA_STORAGE_WINDOW_S", 7 * 86400, 0, 10 * 365 * 86400)
    if network != "local" and not use_mock and storage_window_s > 0 and _get(env, "DA_START_HEIGHT") is None:
        # (its default, 1, is older than any pruning node keeps: the first read stopped there for good, the
        # coordinator never ready; the deployment example left it empty for the operator to fill: a review)
        raise ConfigError("DA_START_HEIGHT", None, f"the height the cluster's history begins at on "
                          f"DA_NETWORK={network}: a node that prunes (DA_STORAGE_WINDOW_S={storage_window_s}) keeps "
                          "no height 1; or DA_STORAGE_WINDOW_S=0 with an archival node")

    return Config(
        da_rpc_url=rpc_url,
        da_namespace=namespace,
        da_auth_token=token,
        da_network=network,
        da_timeout_ms=_int(env, "DA_TIMEOUT_MS", 30000, 1, 3_600_000),
        da_retry_count=_int(env, "DA_RETRY_COUNT", 3, 0, 100),
        da_retry_delay_ms=_int(env, "DA_RETRY_DELAY_MS", 1000, 0, 3_600_000),
        da_gas_price=gas_price,
        da_start_height=_int(env, "DA_START_HEIGHT", 1, 1, 2**62),
        da_storage_window_s=storage_window_s,
        use_mock_da=use_mock,
        mock_da_path=_get(env, "MOCK_DA_PATH") or "",
        enable_fallback=enable_fallback,
        fallback_da_type=fallback_type,
        quorum_validators=validators,
        quorum_validator_keys=validator_keys,
        quorum_validator=_bool(env, "QUORUM_VALIDATOR", False),
        quorum_threshold=_int(env, "QUORUM_THRESHOLD", 67, 1, 100),
        quorum_signature_timeout_ms=_int(env, "QUORUM_SIGNATURE_TIMEOUT_MS", 5000, 1, 3_600_000),
        emergency_da_url=emergency_url,
        emergency_da_key=emergency_keys[0] if emergency_keys else None,
        reconcile_batch_size=_int(env, "RECONCILE_BATCH_SIZE", 10, 1, 10_000),
        reconcile_retry_delay_ms=_int(env, "RECONCILE_RETRY_DELAY_MS", 1000, 0, 3_600_000),
        reconcile_max_retries=_int(env, "RECONCILE_MAX_RETRIES", 3, 0, 1000),
        reconcile_parallel=_bool(env, "RECONCILE_PARALLEL", False),
        reconcile_adopt_grace_ms=_int(env, "RECONCILE_ADOPT_GRACE_MS", 30_000, 0, 86_400_000),
        host=host,
        allow_unauthenticated=allow_unauthenticated,
        port=_int(env, "COORDINATOR_PORT", 8080, 0, 65535),
        coordinator_id=coordinator_id,
        data_dir=data_dir,
        api_token=api_token,
        stats_ttl_ms=_int(env, "STATS_TTL_MS", 300_000, 1, 86_400_000),
        cluster_member_keys=member_keys,
        cluster_member_ids=member_ids,
        max_inflight_writes=_int(env, "MAX_INFLIGHT_WRITES", 1024, 1, 1_000_000),
        cluster_id=cluster_id,
        peers=peers,
        peer_host=_host(env, "PEER_HOST"),
        peer_port=_int(env, "PEER_PORT", 0, 0, 65535),
        peer_heartbeat_ms=_int(env, "PEER_HEARTBEAT_MS", 1000, 10, 60_000),
        dkg_threshold=_dkg_threshold(env, len(peers)),
        dkg_auto=_bool(env, "DKG_AUTO", True),
        dkg_timeout_ms=_int(env, "DKG_TIMEOUT_MS", 30_000, 1_000, 3_600_000),
        # the bytes the operator gave (a Latin-1 value reaches us as surrogates: .encode() failed with a traceback)
        keystore_passphrase=(env.get("KEYSTORE_PASSPHRASE") or "").encode("utf-8", "surrogateescape") or None,
        receipt_batch_max=_int(env, "RECEIPT_BATCH_MAX", 256, 1, 1024),
        receipt_batch_wait_ms=_int(env, "RECEIPT_BATCH_WAIT_MS", 2, 0, 10_000),
        receipt_epoch_grace=_int(env, "RECEIPT_EPOCH_GRACE", 1, 0, 1_000_000),
        epoch_length_s=_int(env, "EPOCH_LENGTH_S", 3600, 1, 10**9),
        publish_interval_ms=_int(env, "PUBLISH_INTERVAL_MS", 200, 1, 600_000),
        snapshot_interval_ms=_int(env, "SNAPSHOT_INTERVAL_MS", 30_000, 100, 86_400_000),
        # at most what every layer accepts: Celestia blobs (1.9 MiB), blob stores (2 MiB bodies); this only
        # limits what we post: every coordinator accepts blobs up to the protocol's MAX_BLOB_BYTES
        blob_max_bytes=_int(env, "DA_BLOB_MAX_BYTES", MAX_BLOB_BYTES, 4096, MAX_BLOB_BYTES),
        da_health_interval_ms=_int(env, "DA_HEALTH_INTERVAL_MS", 5000, 50, 3_600_000),
        da_health_timeout_ms=_int(env, "DA_HEALTH_TIMEOUT_MS", 1500, 10, 3_600_000),
        da_failure_threshold=_int(env, "DA_FAILURE_THRESHOLD", 3, 1, 1000),
        da_recovery_threshold=_int(env, "DA_RECOVERY_THRESHOLD", 2, 1, 1000),
        log_format=log_format(env),
        log_level=log_level(env),
    )
