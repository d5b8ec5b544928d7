"""``dsdn status|nodes|objects|placement`` (deploy/ctl.py) against real coordinator processes.

Three real ``dsdn-coordinator`` processes with an API token: two cluster members (peer links, a DKG between
them, one shared Mock DA log) and a third outside the cluster (its own DA log, so its state root differs from
the majority's). A cluster file lists them as ``dsdn cluster up`` would. The CLI runs in this process (its
``main``, exit code and output captured) and, for the entry point, as the real ``dsdn`` command.
``dsdn receipt submit|get|list|verify`` (deploy/receipt_cli.py, on ctl's machinery) run against the same
cluster: receipts made by ``dsdn receipt make`` for nodes registered with their keys, signed by the two members.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import pytest

from consensus import receipts as rc
from deploy import ctl
from node import identity
from tests.proc import free_port

TOKEN = "ctl-test-token"
ROOT = Path(__file__).resolve().parent.parent


class Procs:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}

    def start(self, cid: str, **env: str) -> None:
        port = free_port()
        self.urls[cid] = f"http://127.0.0.1:{port}"
        full = {**os.environ, "USE_MOCK_DA": "true", "COORDINATOR_ID": cid, "COORDINATOR_PORT": str(port),
                "COORDINATOR_DATA_DIR": str(self.base / cid), "PUBLISH_INTERVAL_MS": "20",
                "COORDINATOR_API_TOKEN": TOKEN, "DA_HEALTH_INTERVAL_MS": "500", "PEER_HEARTBEAT_MS": "200", **env}
        log = open(self.base / f"{cid}.log", "wb")  # noqa: SIM115 - the child owns it for its lifetime
        self.procs[cid] = subprocess.Popen([sys.executable, "-m", "deploy.coordinator"], env=full, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
        log.close()

    def log(self, cid: str) -> str:
        return (self.base / f"{cid}.log").read_text(errors="replace")[-5000:]

    def wait(self, what: str, predicate: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for cid, proc in self.procs.items():
                assert proc.poll() is None, f"{cid} exited:\n{self.log(cid)}"
            try:
                if predicate():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(self.log(c) for c in self.procs))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Procs]:
    base = tmp_path_factory.mktemp("ctl")
    procs = Procs(base)
    members = ["ctl-a", "ctl-b"]
    keys = [bytes(identity.load_or_create(base / cid).verify_key).hex() for cid in members]
    peers = ",".join(f"{cid}={key}@127.0.0.1:{free_port()}" for cid, key in zip(members, keys, strict=True))
    try:
        for cid in members:
            procs.start(cid, CLUSTER_PEERS=peers, MOCK_DA_PATH=str(base / "shared-da.sqlite"))
        procs.start("ctl-outsider", MOCK_DA_PATH=str(base / "own-da.sqlite"))
        with httpx.Client(timeout=5) as http:
            procs.wait("every coordinator ready",
                       lambda: all(http.get(f"{u}/ready").status_code == 200 for u in procs.urls.values()))
            procs.wait("the DKG of the two members", lambda: all(
                http.get(f"{procs.urls[c]}/cluster/status").json()["group_public_key"] for c in members))
        cluster_file = base / "work" / ".dsdn" / "cluster" / "cluster.json"  # where `dsdn cluster up` writes it
        cluster_file.parent.mkdir(parents=True)
        entries = [{"role": "devnet", "id": "devnet", "pid": None, "url": "http://127.0.0.1:1"}]
        entries += [{"role": "coordinator", "id": cid, "pid": procs.procs[cid].pid, "url": url, "argv": [], "env": {}}
                    for cid, url in procs.urls.items()]
        cluster_file.write_text(json.dumps({"data_dir": str(base), "processes": entries}, indent=2))
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def in_cluster_dir(cluster: Procs, monkeypatch: pytest.MonkeyPatch) -> Procs:
    """The working directory holds .dsdn/cluster/cluster.json, as after `dsdn cluster up`; no token in the env."""
    monkeypatch.chdir(cluster.base / "work")
    monkeypatch.delenv(ctl.TOKEN_ENV, raising=False)
    return cluster


def dsdn(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    from deploy.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def converge(cluster: Procs) -> None:
    with httpx.Client(timeout=5) as http:
        cluster.wait("the two members to agree", lambda: len(
            {http.get(f"{cluster.urls[c]}/state/root").json()["root"] for c in ("ctl-a", "ctl-b")}) == 1
            and http.get(f"{cluster.urls['ctl-a']}/state/root").json()["pending"] == 0)


# ---- status -----------------------------------------------------------------------------------------------

def test_status_one_row_per_coordinator_marks_the_root_off_the_majority(
        in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = in_cluster_dir
    code, _, err = dsdn(capsys, "nodes", "register", "status-node", "--zone", "z1", "--addr", "10.0.0.9:5000",
                        "--token", TOKEN)
    assert code == 0, err
    converge(cluster)
    code, out, err = dsdn(capsys, "status")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "READY", "ROOT", "EVENTS", "DA", "PEERS", "UP", "RECEIPTS", "FINAL"]
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert set(rows) == {"ctl-a", "ctl-b", "ctl-outsider"}
    with httpx.Client(timeout=5) as http:
        roots = {c: http.get(f"{u}/state/root").json() for c, u in cluster.urls.items()}
    for cid in ("ctl-a", "ctl-b"):  # ready, root prefix, events, DA, one peer of one up, receipts final
        assert rows[cid][:6] == [cid, "yes", roots[cid]["root"][:16], str(roots[cid]["events_applied"]), "Healthy",
                                 "1/1"]
        assert len(rows[cid]) == 7 and rows[cid][6].isdigit()
    outsider = rows["ctl-outsider"]
    assert outsider == ["ctl-outsider", "yes", roots["ctl-outsider"]["root"][:16], "*",
                        str(roots["ctl-outsider"]["events_applied"]), "Healthy", "0/0", "-"]
    assert lines[-1] == f"* root differs from the majority ({roots['ctl-a']['root'][:16]})"

    code, out, err = dsdn(capsys, "status", "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["majority_root"] == roots["ctl-a"]["root"] and report["unreachable"] == 0
    by_id = {r["id"]: r for r in report["coordinators"]}
    assert by_id["ctl-a"]["root_matches_majority"] is True and by_id["ctl-outsider"]["root_matches_majority"] is False
    assert by_id["ctl-b"]["peers_up"] == 1 and by_id["ctl-b"]["peers_total"] == 1 and by_id["ctl-b"]["ready"] is True
    assert by_id["ctl-outsider"]["receipts_final"] is None and isinstance(by_id["ctl-a"]["receipts_final"], int)
    assert by_id["ctl-a"]["url"] == cluster.urls["ctl-a"] and by_id["ctl-a"]["da_status"] == "Healthy"


def test_status_counts_a_final_receipt(in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = in_cluster_dir
    node_key = nacl.signing.SigningKey(bytes([42]) * 32)
    code, _, err = dsdn(capsys, "nodes", "register", "rnode", "--zone", "z", "--addr", "10.0.0.7:1", "--public-key",
                        bytes(node_key.verify_key).hex(), "--token", TOKEN)
    assert code == 0, err
    assert dsdn(capsys, "objects", "register", "robj", "--size", "1", "--token", TOKEN)[0] == 0
    a = cluster.urls["ctl-a"]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=40, headers=headers) as http:
        assert http.post(f"{a}/replica/mark_healed", json={"hash": "robj", "node_id": "rnode"}).status_code == 200
        converge(cluster)
        receipt = rc.sign_as_node(node_key, receipt_type="storage", node_id="rnode", subject="robj",
                                  epoch=int(time.time() // 3600) + 1, usage_proof_hash="ab" * 32,
                                  execution_commitment=None, reward_base=10, submitter_address="cd" * 20,
                                  timestamp=int(time.time())).to_json()
        r = http.post(f"{a}/receipts", params={"wait_ms": 20000}, json=receipt)
        assert r.status_code == 200, r.text
    code, out, _ = dsdn(capsys, "status", "--json")
    final = {r["id"]: r["receipts_final"] for r in json.loads(out)["coordinators"]}
    assert final["ctl-a"] >= 1 and final["ctl-outsider"] is None


def test_status_with_a_coordinator_down_prints_its_row_and_fails(
        in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cluster = in_cluster_dir
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, err = dsdn(capsys, "status", "--url", cluster.urls["ctl-a"], "--url", dead)
    assert code == 1
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["ctl-a", "yes"] and lines[2].split()[:2] == [dead, "unreachable"]
    assert one_line(err) == f"dsdn status: 1 of 2 coordinators unreachable: {dead} (Connection refused)"
    code, out, err = dsdn(capsys, "status", "--json", "--url", dead)
    assert code == 1 and json.loads(out)["unreachable"] == 1 and json.loads(out)["majority_root"] is None
    one_line(err)


# ---- nodes, objects, placement ---------------------------------------------------------------------------

def test_nodes_objects_placement_tables_and_json(in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = in_cluster_dir
    for i in range(3):
        code, out, err = dsdn(capsys, "nodes", "register", f"pn-{i}", "--zone", f"zone-{i}", "--addr",
                              f"10.1.0.{i}:4000", "--capacity-gb", str(100 + i), "--token", TOKEN)
        assert code == 0 and err == "" and out == f"node pn-{i} registered (via ctl-a)\n"
    code, out, _ = dsdn(capsys, "nodes", "list")
    table = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert out.splitlines()[0].split() == ["ID", "ZONE", "ADDR", "CAPACITY_GB", "PUBLIC", "KEY"]
    assert table["pn-1"] == ["pn-1", "zone-1", "10.1.0.1:4000", "101", "-"]
    code, out, _ = dsdn(capsys, "nodes", "list", "--json")
    with httpx.Client(timeout=5) as http:
        assert json.loads(out) == http.get(f"{cluster.urls['ctl-a']}/nodes").json()
    code, out, _ = dsdn(capsys, "nodes", "get", "pn-2")
    assert [line.split() for line in out.splitlines()][:5] == [
        ["FIELD", "VALUE"], ["id", "pn-2"], ["zone", "zone-2"], ["addr", "10.1.0.2:4000"], ["capacity_gb", "102"]]
    code, out, _ = dsdn(capsys, "nodes", "get", "pn-2", "--json")
    assert json.loads(out) == {"id": "pn-2", "zone": "zone-2", "addr": "10.1.0.2:4000", "capacity_gb": 102, "meta": {}}

    code, out, err = dsdn(capsys, "objects", "register", "obj-ctl", "--size", "2048", "--token", TOKEN, "--json")
    assert code == 0 and json.loads(out) == {"ok": True}
    code, out, _ = dsdn(capsys, "objects", "get", "obj-ctl")
    assert [line.split() for line in out.splitlines()] == [["FIELD", "VALUE"], ["hash", "obj-ctl"], ["size", "2048"],
                                                           ["replicas", "none"]]
    code, out, _ = dsdn(capsys, "objects", "get", "obj-ctl", "--json")
    assert json.loads(out) == {"hash": "obj-ctl", "size": 2048, "replicas": []}

    code, out, _ = dsdn(capsys, "placement", "obj-ctl", "--rf", "2", "--json")
    chosen = json.loads(out)
    with httpx.Client(timeout=5) as http:
        assert chosen == http.get(f"{cluster.urls['ctl-a']}/placement/obj-ctl", params={"rf": 2}).json()
        zones = {n["id"]: n["zone"] for n in http.get(f"{cluster.urls['ctl-a']}/nodes").json()}
    assert len(chosen) == 2
    code, out, _ = dsdn(capsys, "placement", "obj-ctl", "--rf", "2")
    assert [line.split() for line in out.splitlines()] == [["RANK", "NODE", "ZONE"]] + [
        [str(i), nid, zones[nid]] for i, nid in enumerate(chosen, 1)]


def test_the_first_reachable_coordinator_answers(cluster: Procs, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cluster_file = tmp_path / "cluster.json"
    cluster_file.write_text(json.dumps({"processes": [
        {"role": "coordinator", "id": "gone", "url": dead},
        {"role": "coordinator", "id": "ctl-b", "url": cluster.urls["ctl-b"]}]}))
    code, out, err = dsdn(capsys, "nodes", "register", "via-b", "--zone", "z", "--addr", "10.2.0.1:1",
                          "--cluster", str(cluster_file), "--token", TOKEN)
    assert code == 0 and out == "node via-b registered (via ctl-b)\n" and err == ""


# ---- tokens and errors -------------------------------------------------------------------------------------

def test_token_from_flag_or_environment(in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("objects", "register", "tok-obj", "--size", "5")
    code, out, err = dsdn(capsys, *args)
    assert code == 1 and out == ""
    assert one_line(err) == (
        f"dsdn objects register: {in_cluster_dir.urls['ctl-a']}: HTTP 401 POST /object/register: unauthorized: "
        f"this route needs Authorization: Bearer <COORDINATOR_API_TOKEN> (pass --token or set DSDN_API_TOKEN)")
    code, _, err = dsdn(capsys, *args, "--token", "wrong")
    assert code == 1 and "HTTP 401" in one_line(err)
    assert one_line(err).endswith("(the token given was refused: check --token or DSDN_API_TOKEN)")
    monkeypatch.setenv("DSDN_API_TOKEN", TOKEN)
    code, out, err = dsdn(capsys, *args)
    assert code == 0 and err == "" and out.startswith("object tok-obj registered")
    code, _, err = dsdn(capsys, *args, "--token", "wrong")  # the flag wins over the environment
    assert code == 1 and "HTTP 401" in one_line(err)
    assert dsdn(capsys, "nodes", "list")[0] == 0  # reads need no token


def test_errors_are_one_line_with_the_servers_message(in_cluster_dir: Procs,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    a = in_cluster_dir.urls["ctl-a"]
    code, out, err = dsdn(capsys, "nodes", "get", "ghost")
    assert code == 1 and out == ""
    assert one_line(err) == (f"dsdn nodes get: {a}: HTTP 404 GET /node/ghost: node not found: no node 'ghost' is "
                              "registered here (node_id=ghost)")
    code, _, err = dsdn(capsys, "objects", "get", "nothing-here")
    assert code == 1 and one_line(err).endswith(
        "HTTP 404 GET /object/nothing-here: not found: no object 'nothing-here' is registered here (hash=nothing-here)")
    code, _, err = dsdn(capsys, "nodes", "register", "n-bad", "--zone", "z", "--addr", "no-port", "--token", TOKEN)
    assert code == 1 and "HTTP 422 POST /register: invalid_request: addr: " in one_line(err)
    code, _, err = dsdn(capsys, "objects", "register", "o", "--size", "-1", "--token", TOKEN)
    assert code == 1 and "HTTP 422" in one_line(err) and "size" in err
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = dsdn(capsys, "nodes", "list", "--url", dead)
    assert code == 1 and one_line(err) == f"dsdn nodes list: coordinator unreachable: {dead}: Connection refused"
    code, _, err = dsdn(capsys, "placement", "x", "--url", f"{dead},{dead}")
    assert code == 1 and one_line(err).startswith("dsdn placement: no coordinator reachable: ")


def test_bad_arguments_exit_2_with_one_line(in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    for argv, expected in [
        (["placement", "h", "--rf", "0"], "dsdn placement: error: --rf must be from 1 to 64"),
        (["nodes", "register", "n"], "dsdn nodes register: error: the following arguments are required: --zone, "
                                     "--addr (see --help)"),
        (["nodes"], "dsdn nodes: error: the following arguments are required: action (see --help)"),
        (["objects", "register", "h", "--size", "big"], "dsdn objects register: error: argument --size: invalid "
                                                        "int value: 'big' (see --help)"),
        (["status", "--url", "ftp://x"], "dsdn status: --url 'ftp://x': expected an http:// or https:// URL with a "
                                         "host (and a valid port)"),
        # httpx.InvalidURL from the first request was a traceback (a reviewer's finding), and a non-ASCII token too
        (["status", "--url", "http://[::1"], "dsdn status: --url 'http://[::1': expected an http:// or https:// URL "
                                             "with a host (and a valid port)"),
        (["receipt", "list", "--url", "http://x:99999"], "dsdn receipt list: --url 'http://x:99999': expected an "
                                                         "http:// or https:// URL with a host (and a valid port)"),
        (["status", "--token", "h\u00e9llo", "--url", "http://127.0.0.1:1"],
         "dsdn status: the token (--token or DSDN_API_TOKEN) must be visible ASCII characters, as the coordinator's "
         "COORDINATOR_API_TOKEN is"),
        (["status", "--timeout", "0"], "dsdn status: error: --timeout must be above 0 and at most 3600"),
        (["status", "--timeout", "inf"], "dsdn status: error: --timeout must be above 0 and at most 3600"),
        (["status", "--timeout", "nan"], "dsdn status: error: --timeout must be above 0 and at most 3600"),
        (["receipt", "make", "--node", "n", "--epoch-length", "0", "--node-key", str(tmp_path / "k")],
         "dsdn receipt make: error: --epoch-length must be 1 or more"),
        (["status", "--cluster", str(tmp_path / "none.json")],
         f"dsdn status: no cluster file at {tmp_path / 'none.json'} (start a cluster with `dsdn cluster up`, or pass "
         "--url)"),
    ]:
        code, out, err = dsdn(capsys, *argv)
        assert (code, out, one_line(err)) == (2, "", expected), argv
    assert not (tmp_path / "k").exists()  # refused before the node key was made
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, _, err = dsdn(capsys, "status", "--cluster", str(broken))
    assert code == 2 and one_line(err) == f"dsdn status: {broken} is not a cluster file written by `dsdn cluster up`"
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"processes": [{"id": "c0", "role": "coordinator", "url": "http://[::1"}]}))
    code, _, err = dsdn(capsys, "status", "--cluster", str(odd))
    assert code == 2 and one_line(err) == f"dsdn status: {odd}: coordinator c0's URL 'http://[::1' is not a usable " \
                                          "http(s) URL"


def test_the_dsdn_command_itself(in_cluster_dir: Procs) -> None:
    """The console script, run as a user would, from the directory holding .dsdn/cluster/cluster.json."""
    dsdn_bin = Path(sys.executable).parent / "dsdn"
    command = [str(dsdn_bin)] if dsdn_bin.exists() else [sys.executable, "-c", "from deploy.cli import main; main()"]
    env = {k: v for k, v in os.environ.items() if k != ctl.TOKEN_ENV}
    done = subprocess.run([*command, "status"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 6 and done.stderr == "", done.stderr
    done = subprocess.run([*command, "nodes", "get", "ghost"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1 and done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert "HTTP 404" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([*command, "nodes", "register", "env-node", "--zone", "z", "--addr", "10.3.0.1:1"],
                          capture_output=True, text=True, timeout=60, env={**env, ctl.TOKEN_ENV: TOKEN})
    assert done.returncode == 0 and done.stdout == "node env-node registered (via ctl-a)\n"


def test_status_table_rebuilding_row_and_no_majority() -> None:
    """The table alone (rows as the coordinators would give them): a coordinator rebuilding from DA shows its
    ETA; with no root held by a majority, every root is marked."""
    row = {"id": "c0", "reachable": True, "ready": False, "root": "ab" * 32, "events_applied": 5,
           "da_status": "Healthy", "peers_up": 1, "peers_total": 3, "receipts_final": 0,
           "progress": {"eta_s": 12.4}}
    other = {**row, "id": "c1", "ready": True, "root": "cd" * 32, "progress": None}
    report = {"coordinators": [row, other], "majority_root": None}
    for r in report["coordinators"]:
        r["root_matches_majority"] = False
    lines = ctl.status_table(report).splitlines()
    assert lines[1].startswith("c0  no (rebuilding, ETA 12s)  abababababababab *  5")
    assert lines[2].split()[:4] == ["c1", "yes", "cdcdcdcdcdcdcdcd", "*"]
    assert lines[-1] == "* root differs from the majority (no root is held by a majority)"


# ---- dsdn receipt submit|get|list (deploy/receipt_cli.py, on ctl's machinery) --------------------------------

def register_receipt_node(capsys: pytest.CaptureFixture[str], cluster: Procs, tmp_path: Path,
                          node: str) -> Path:
    """A node registered with its public key (converged on both members, who both validate its receipts); the
    path of its key, for `dsdn receipt make --node-key`."""
    key = nacl.signing.SigningKey(os.urandom(32))
    key_file = tmp_path / f"{node}.key"
    key_file.write_bytes(bytes(key))
    code, _, err = dsdn(capsys, "nodes", "register", node, "--zone", "z", "--addr", "10.5.0.1:1", "--public-key",
                        bytes(key.verify_key).hex(), "--token", TOKEN)
    assert code == 0, err
    converge(cluster)
    return key_file


def make_receipt(capsys: pytest.CaptureFixture[str], key_file: Path, node: str, path: Path) -> dict[str, Any]:
    """A compute receipt of ``node`` made by `dsdn receipt make` (offline), written to ``path``."""
    code, out, err = dsdn(capsys, "receipt", "make", "--node", node, "--type", "compute", "--node-key", str(key_file))
    assert code == 0 and err.startswith("node public key: "), err
    path.write_text(out)
    return json.loads(out)


def receipt_id(receipt: dict[str, Any]) -> str:
    return rc.from_json(receipt).id.hex()


def group_key(cluster: Procs) -> str:
    with httpx.Client(timeout=5) as http:
        return http.get(f"{cluster.urls['ctl-a']}/cluster/status").json()["group_public_key"]


def test_receipt_submit_token_json_verifies_offline_and_table(
        in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = in_cluster_dir
    a = cluster.urls["ctl-a"]
    key_file = register_receipt_node(capsys, cluster, tmp_path, "rc-node")
    receipt = make_receipt(capsys, key_file, "rc-node", tmp_path / "r1.json")

    code, out, err = dsdn(capsys, "receipt", "submit", str(tmp_path / "r1.json"))  # cluster.json; no token
    assert code == 1 and out == ""
    assert one_line(err) == (
        f"dsdn receipt submit: {a}: HTTP 401 POST /receipts: unauthorized: this route needs Authorization: Bearer "
        f"<COORDINATOR_API_TOKEN> (pass --token or set DSDN_API_TOKEN)")
    monkeypatch.setenv("DSDN_API_TOKEN", TOKEN)
    code, out, err = dsdn(capsys, "receipt", "submit", str(tmp_path / "r1.json"), "--wait-ms", "20000", "--json")
    assert code == 0 and err == "", err
    doc = json.loads(out)
    with httpx.Client(timeout=5) as http:  # --json: the server's document, unchanged
        assert doc == http.get(f"{a}/receipts/{receipt_id(receipt)}").json()
    assert doc["status"] == "final" and doc["receipt_id"] == receipt_id(receipt) and doc["receipt"] == receipt
    signed = tmp_path / "signed.json"
    signed.write_text(out)
    key = group_key(cluster)
    code, out, err = dsdn(capsys, "receipt", "verify", str(signed), "--group-key", key)
    assert (code, json.loads(out), err) == (0, {"valid": True, "reason": "valid"}, "")
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps({**doc, "signature": "00" * 64}))
    code, out, _ = dsdn(capsys, "receipt", "verify", str(tampered), "--group-key", key)
    assert code == 1 and json.loads(out)["valid"] is False
    not_a_document = tmp_path / "other.json"
    not_a_document.write_text(json.dumps({"x": 1}))  # JSON, but no document: bad input (2), not invalid (1)
    code, out, _ = dsdn(capsys, "receipt", "verify", str(not_a_document), "--group-key", key)
    assert code == 2 and json.loads(out)["reason"].startswith("malformed document")
    code, out, err = dsdn(capsys, "receipt", "verify", str(tmp_path / "missing.json"), "--group-key", key)
    assert code == 2 and out == ""
    assert one_line(err) == f"dsdn receipt verify: {tmp_path / 'missing.json'}: No such file or directory"

    second = make_receipt(capsys, key_file, "rc-node", tmp_path / "r2.json")  # from stdin, a table for people
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO((tmp_path / "r2.json").read_text()))
    code, out, err = dsdn(capsys, "receipt", "submit", "-", "--wait-ms", "20000")
    assert code == 0 and err == "", err
    with httpx.Client(timeout=5) as http:
        doc2 = http.get(f"{a}/receipts/{receipt_id(second)}").json()
    rows = [line.split(None, 1) for line in out.splitlines()]
    assert rows == [["FIELD", "VALUE"], ["receipt_id", receipt_id(second)], ["status", "final"], ["type", "compute"],
                    ["node", "rc-node"], ["subject", second["subject"]], ["epoch", str(second["epoch"])],
                    ["signers", ", ".join(map(str, doc2["signers"]))], ["batch_root", doc2["batch"]["root"][:16] + "…"]]
    assert len(doc2["signers"]) == 2  # both members signed: the row shows real content


def test_receipt_submit_not_final_in_time_is_accepted_and_says_so(
        in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cluster = in_cluster_dir
    key_file = register_receipt_node(capsys, cluster, tmp_path, "rc-202")
    receipt = make_receipt(capsys, key_file, "rc-202", tmp_path / "r.json")
    rid = receipt_id(receipt)
    code, out, err = dsdn(capsys, "receipt", "submit", str(tmp_path / "r.json"), "--wait-ms", "0", "--json",
                          "--token", TOKEN)
    assert code == 0
    answer = json.loads(out)  # the server's 202 answer, not a document
    assert answer["receipt_id"] == rid and "signature" not in answer
    line = one_line(err)
    assert line.startswith(f"dsdn receipt submit: receipt {rid} accepted by ctl-a, status {answer['status']}: ")
    assert line.endswith(f"fetch it later with `dsdn receipt get {rid}`")


def test_receipt_get_table_json_and_unknown(in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    cluster = in_cluster_dir
    a = cluster.urls["ctl-a"]
    key_file = register_receipt_node(capsys, cluster, tmp_path, "rg-node")
    receipt = make_receipt(capsys, key_file, "rg-node", tmp_path / "r.json")
    rid = receipt_id(receipt)
    assert dsdn(capsys, "receipt", "submit", str(tmp_path / "r.json"), "--wait-ms", "20000", "--json",
                "--token", TOKEN)[0] == 0
    code, out, err = dsdn(capsys, "receipt", "get", rid, "--json")  # reads need no token
    with httpx.Client(timeout=5) as http:
        expected = http.get(f"{a}/receipts/{rid}").json()
    assert code == 0 and err == "" and json.loads(out) == expected and expected["status"] == "final"
    code, out, err = dsdn(capsys, "receipt", "get", rid, "--url", cluster.urls["ctl-b"])  # any member serves it
    rows = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert code == 0 and err == "" and out.splitlines()[0].split() == ["FIELD", "VALUE"]
    assert rows["receipt_id"] == rid and rows["status"] == "final" and rows["node"] == "rg-node"
    assert rows["batch_root"] == expected["batch"]["root"][:16] + "…" and rows["epoch"] == str(receipt["epoch"])
    unknown = "0" * 64
    code, out, err = dsdn(capsys, "receipt", "get", unknown)
    assert code == 1 and out == ""
    assert one_line(err) == (f"dsdn receipt get: {a}: HTTP 404 GET /receipts/{unknown}: receipt not found: no receipt "
                             f"with this id is known here (receipt_id={unknown})")


def test_receipt_list_filters_by_node_and_pages(in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    cluster = in_cluster_dir
    key_file = register_receipt_node(capsys, cluster, tmp_path, "rl-node")
    other_key = register_receipt_node(capsys, cluster, tmp_path, "rl-other")
    ids = []
    for k in range(3):
        ids.append(receipt_id(make_receipt(capsys, key_file, "rl-node", tmp_path / f"r{k}.json")))
        assert dsdn(capsys, "receipt", "submit", str(tmp_path / f"r{k}.json"), "--wait-ms", "20000",
                    "--token", TOKEN)[0] == 0
    make_receipt(capsys, other_key, "rl-other", tmp_path / "other.json")
    assert dsdn(capsys, "receipt", "submit", str(tmp_path / "other.json"), "--wait-ms", "20000",
                "--token", TOKEN)[0] == 0
    ids.sort()

    code, out, err = dsdn(capsys, "receipt", "list", "--node", "rl-node", "--json")
    page = json.loads(out)
    assert code == 0 and err == "" and [d["receipt_id"] for d in page["receipts"]] == ids
    assert page["next_after"] is None
    code, out, _ = dsdn(capsys, "receipt", "list", "--node", "rl-node", "--limit", "2", "--json")
    first = json.loads(out)
    assert [d["receipt_id"] for d in first["receipts"]] == ids[:2] and first["next_after"] == ids[1]
    code, out, _ = dsdn(capsys, "receipt", "list", "--node", "rl-node", "--limit", "2", "--after", ids[1], "--json")
    assert [d["receipt_id"] for d in json.loads(out)["receipts"]] == ids[2:] and json.loads(out)["next_after"] is None

    code, out, err = dsdn(capsys, "receipt", "list", "--node", "rl-node", "--limit", "2")  # the table
    lines = out.splitlines()
    assert code == 0 and err == ""
    assert lines[0].split() == ["RECEIPT", "ID", "STATUS", "TYPE", "NODE", "SUBJECT", "EPOCH", "BATCH", "ROOT"]
    assert [line.split()[:4] for line in lines[1:3]] == [[rid, "final", "compute", "rl-node"] for rid in ids[:2]]
    assert lines[3:] == ["", f"more: dsdn receipt list … --after {ids[1]}"]
    code, out, _ = dsdn(capsys, "receipt", "list", "--node", "nobody-here")
    assert code == 0 and out == "no receipts\n"
    code, out, _ = dsdn(capsys, "receipt", "list", "--node", "rl-other", "--status", "final", "--json")
    others = json.loads(out)["receipts"]
    assert code == 0 and len(others) == 1
    assert others[0]["receipt"]["node_id"] == "rl-other" and others[0]["status"] == "final"
    code, out, _ = dsdn(capsys, "receipt", "list", "--node", "rl-other", "--status", "pending", "--json")
    assert code == 0 and json.loads(out)["receipts"] == []


def test_receipt_commands_errors_are_one_line(in_cluster_dir: Procs, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    receipt_file = tmp_path / "r.json"
    receipt_file.write_text(json.dumps({"receipt_type": "storage"}))
    for argv, prog in [(["submit", str(receipt_file)], "submit"), (["get", "ab" * 32], "get"), (["list"], "list")]:
        code, out, err = dsdn(capsys, "receipt", *argv, "--url", dead, "--token", TOKEN)
        assert (code, out, one_line(err)) == (1, "", f"dsdn receipt {prog}: coordinator unreachable: {dead}: "
                                                     "Connection refused")
        none = tmp_path / "none.json"
        code, out, err = dsdn(capsys, "receipt", *argv, "--cluster", str(none))
        assert (code, out, one_line(err)) == (2, "", f"dsdn receipt {prog}: no cluster file at {none} (start a "
                                                     "cluster with `dsdn cluster up`, or pass --url)")
    code, _, err = dsdn(capsys, "receipt", "submit", str(receipt_file), "--token", TOKEN)  # the server's 422
    assert code == 1 and "HTTP 422 POST /receipts: invalid_receipt: " in one_line(err)
    not_json = tmp_path / "bad.json"
    not_json.write_text("{nope")
    for argv, expected in [
        (["submit", str(tmp_path / "missing.json")],
         f"dsdn receipt submit: cannot read {tmp_path / 'missing.json'}: No such file or directory"),
        (["submit", str(not_json)], f"dsdn receipt submit: {not_json} is not JSON: Expecting property name "
                                    "enclosed in double quotes: line 1 column 2 (char 1)"),
        (["submit", "x.json", "--wait-ms", "30001"], "dsdn receipt submit: error: --wait-ms must be from 0 to 30000"),
        (["list", "--limit", "0"], "dsdn receipt list: error: --limit must be from 1 to 1000"),
        (["list", "--after", "xyz"], "dsdn receipt list: error: --after must be a receipt id (64 hex characters)"),
        (["list", "--epoch", "soon"], "dsdn receipt list: error: argument --epoch: invalid int value: 'soon' (see "
                                      "--help)"),
        (["get"], "dsdn receipt get: error: the following arguments are required: id (see --help)"),
        (["make", "--node", "n"], "dsdn receipt make: error: --subject is required for a storage receipt (see "
                                  "--help)"),
    ]:
        code, out, err = dsdn(capsys, "receipt", *argv)
        assert (code, out, one_line(err)) == (2, "", expected), argv


def test_a_closed_stdout_ends_quietly(in_cluster_dir: Procs, tmp_path: Path) -> None:
    """`dsdn status --json | head -1`: the reader goes away before the output is written. A real pipe whose read
    end is closed: every write fails with EPIPE; the command must not end in a BrokenPipeError traceback."""
    dsdn_bin = Path(sys.executable).parent / "dsdn"
    command = [str(dsdn_bin)] if dsdn_bin.exists() else [sys.executable, "-c", "from deploy.cli import main; main()"]
    signed = tmp_path / "doc.json"
    signed.write_text("{}")
    for argv in (["status", "--json"], ["nodes", "list", "--json"], ["nodes", "list"], ["receipt", "list", "--json"],
                 ["receipt", "verify", str(signed), "--group-key", "00" * 32]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            done = subprocess.run([*command, *argv], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(write_end)
        assert done.returncode == ctl.EXIT_STDOUT_CLOSED == 141, (argv, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr == "", (argv, done.stderr)


def test_receipt_cli_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """From a review: a deeply nested JSON file was a RecursionError traceback (verify, submit); --epoch 0 silently
    made a receipt of the current epoch."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    code, out, err = dsdn(capsys, "receipt", "verify", str(deep), "--group-key", "00" * 32)
    assert (code, out) == (2, "") and one_line(err) == f"dsdn receipt verify: {deep}: the JSON is nested too deeply"
    empty = tmp_path / "signed.json"  # what `submit --json > signed.json` leaves when the submit failed
    for action in (["verify", "--group-key", "00" * 32], ["submit", "--url", "http://127.0.0.1:1"]):
        empty.write_text("")
        code, out, err = dsdn(capsys, "receipt", action[0], str(empty), *action[1:])
        assert (code, out) == (2, "") and one_line(err) == f"dsdn receipt {action[0]}: {empty} is empty: no JSON in it"
        empty.write_text("{nope")
        code, out, err = dsdn(capsys, "receipt", action[0], str(empty), *action[1:])
        assert (code, out) == (2, "") and one_line(err).startswith(f"dsdn receipt {action[0]}: {empty} is not JSON: ")
        assert one_line(err).count("is not JSON") == 1, err
        # not UTF-8; NaN, Infinity and a lone surrogate (Python's json reads them; sent, they failed in the client
        # and were "an unexpected answer from the coordinator", exit 1: a reviewer's reproduction)
        # and a name given twice in one object (the last value won: {"status": "pending", "status": "final"} was
        # verified valid, while the API refuses such a body and a reader taking the first value sees "pending")
        for bad in (b"\xff\xfe{}", b'{"a": NaN}', b'{"a": -Infinity}', b'{"node_id": "\\ud800"}',
                    b'{"status": "pending", "status": "final"}'):
            empty.write_bytes(bad)
            code, out, err = dsdn(capsys, "receipt", action[0], str(empty), *action[1:])
            assert (code, out) == (2, "") and one_line(err).startswith(
                f"dsdn receipt {action[0]}: {empty} is not JSON: "), (bad, err)
    code, out, err = dsdn(capsys, "receipt", "make", "--node", "n", "--subject", "obj", "--epoch", "0",
                          "--node-key", str(tmp_path / "k"))
    assert code == 2 and out == "" and "epoch" in one_line(err) and "Traceback" not in err
    for bad in (["--submitter", "zz"], ["--reward", "0"], ["--proof", "12"]):  # refused: no key file left behind
        code, out, err = dsdn(capsys, "receipt", "make", "--node", "n", "--subject", "obj", *bad,
                              "--node-key", str(tmp_path / "k"))
        assert code == 2 and out == "" and "Traceback" not in err, bad
    assert not (tmp_path / "k").exists()
    for short in ("abcd", "", " " + "00" * 32):  # not a key: bad input (2), not "signed under another key" (1)
        code, out, err = dsdn(capsys, "receipt", "verify", str(deep), "--group-key", short)
        assert (code, out) == (2, "") and "--group-key must be the group's public key" in one_line(err)


def test_strings_from_the_cluster_reach_the_terminal_escaped() -> None:
    """Ids, zones and addresses come from the cluster's members (a lying one's events too) and reached the terminal
    raw: escape sequences cleared the screen or set the title, a newline forged a table row, U+202E reversed one (a
    reviewer's reproduction)."""
    out = ctl.table(["id", "zone"], [["n1\x1b[2J\x1b]0;owned\x07", "z\r\nfake-node  zone-x"], ["n2", "eu\u202e1"]])
    assert all(c.isprintable() or c == "\n" for c in out)
    assert out.count("\n") == 2  # the header and two rows: no forged one
    assert "\\x1b[2J" in out and "\\r\\n" in out and "\\u202e" in out and "n2" in out


async def test_timeout_bounds_the_whole_answer_not_each_read() -> None:
    """httpx's timeout bounds each read: an answer sent a byte a second kept `dsdn nodes list --timeout 2` running
    past 20 s (a reviewer's reproduction)."""
    import trio

    async def drip(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n")
        for _ in range(40):
            await stream.send_all(b" ")
            await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, drip, 0)
        port = listeners[0].socket.getsockname()[1]
        client = ctl.Client(None, 1.0)
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await trio.to_thread.run_sync(client.request, "GET", f"http://127.0.0.1:{port}/nodes")
        assert time.monotonic() - started < 3
        client.close()
        nursery.cancel_scope.cancel()


HEADER_DRIP = """
import socket, sys, time
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()  # the first request: answered at once
conn.recv(65536)
conn.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: 2\\r\\n\\r\\n{}")
conn.close()
conn, _ = server.accept()
conn.recv(65536)
conn.sendall(b"HTTP/1.1 200 OK\\r\\nx-pad: ")
for _ in range(80):
    conn.sendall(b"a")
    time.sleep(0.5)
"""


def test_timeout_bounds_the_headers_too() -> None:
    """The deadline was checked only once the headers were in: headers sent a byte a second kept `dsdn status
    --timeout 2` running for ever (a reviewer's reproduction)."""
    server = subprocess.Popen([sys.executable, "-c", HEADER_DRIP], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = ctl.Client(None, 1.0)
        handler = signal.getsignal(signal.SIGALRM)
        assert client.request("GET", f"http://127.0.0.1:{port}/nodes").json() == {}
        # nothing left armed: a pending alarm would end a later, longer command
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is handler
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.request("GET", f"http://127.0.0.1:{port}/nodes")
        assert time.monotonic() - started < 4
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is handler
        client.close()
    finally:
        server.kill()
        server.wait()


def test_an_output_that_fails_is_one_line_not_a_traceback() -> None:
    """stdout on a full disk (ENOSPC, /dev/full here) ended in a traceback (a reviewer's reproduction)."""
    with open("/dev/full", "w") as full:  # (`dsdn status` prints its table, the coordinator unreachable)
        done = subprocess.run([sys.executable, "-c", "from deploy.cli import main; main()", "status", "--url",
                               "http://127.0.0.1:1"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert one_line(done.stderr) == "dsdn status: standard output: No space left on device", done.stderr


async def test_a_call_given_a_longer_read_timeout_gets_its_answer_past_the_default_timeout() -> None:
    """`dsdn receipt submit` with its defaults (--wait-ms 5000, --timeout 5): the server answers a receipt not final
    yet after the 5 s wait, past the whole-exchange deadline of --timeout: "no answer in time", the answer lost (a
    reviewer's reproduction). The read timeout the call gives (the wait plus --timeout) bounds it instead."""
    import trio

    async def late(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await trio.sleep(1.5)  # the server's wait
        await stream.send_all(b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
                              b"\r\n{}")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, late, 0)
        port = listeners[0].socket.getsockname()[1]
        client = ctl.Client(None, 1.0)
        call = partial(client.request, "POST", f"http://127.0.0.1:{port}/receipts",
                       timeout=httpx.Timeout(1.0, read=3.0))
        response = await trio.to_thread.run_sync(call)
        assert response.status_code == 202
        with pytest.raises(httpx.ReadTimeout):  # and without it, --timeout still bounds the exchange
            await trio.to_thread.run_sync(client.request, "GET", f"http://127.0.0.1:{port}/nodes")
        client.close()
        nursery.cancel_scope.cancel()


LIAR = """
import http.server, json, sys
answers = json.loads(sys.stdin.read())
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0]
        code, body = answers.get(path, [200, "{}"])
        data = body.encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextmanager
def lying_coordinator(answers: dict[str, tuple[int, str]]) -> Iterator[str]:
    """A server answering each GET path with (status, raw JSON text): a member that lies, or a broken proxy."""
    server = subprocess.Popen([sys.executable, "-c", LIAR], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(json.dumps(answers))
        server.stdin.close()
        yield f"http://127.0.0.1:{int(server.stdout.readline())}"
    finally:
        server.kill()
        server.wait()


def run_dsdn(*argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from deploy.cli import main; main()", *argv], capture_output=True,
                          text=True, timeout=60, **kw)


def test_answers_of_the_wrong_shape_or_nested_too_deeply_are_one_line_per_coordinator(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """From a review: JSON nested too deeply (a RecursionError, no ValueError) was a traceback from every client
    command, and from a cluster file; one coordinator answering a list for its root (or a string for its ETA) blanked
    `dsdn status` for the whole cluster, naming no one; `--url ""` asked no one and exited 0."""
    deep = "[" * 100_000 + "]" * 100_000
    with lying_coordinator({"/nodes": (200, deep), "/ready": (200, deep)}) as url:
        code, out, err = dsdn(capsys, "nodes", "list", "--url", url)
        assert (code, out) == (1, "")
        assert one_line(err) == "dsdn nodes list: unexpected answer from the coordinator: JSON nested too deeply"
        code, out, err = dsdn(capsys, "status", "--url", url)
        assert code == 1 and "JSON nested too deeply" in one_line(err)
    root = {"root": "ab" * 32, "events_applied": 3, "pending": 0}
    with lying_coordinator({"/state/root": (200, json.dumps({**root, "root": ["x"]})),
                            "/system/info": (200, '{"coordinator_id": "liar"}')}) as liar, \
            lying_coordinator({"/ready": (503, '{"ready": false, "progress": {"eta_s": "soon"}}'),
                               "/state/root": (200, json.dumps(root)), "/cluster/peers": (200, "[]"),
                               "/system/info": (200, '{"coordinator_id": "rebuilding"}')}) as rebuilding:
        code, out, err = dsdn(capsys, "status", "--url", f"{liar},{rebuilding}")
        assert code == 1 and "dsdn status: 1 of 2 coordinators unreachable or failing:" in one_line(err)
        assert "unexpected answer" in err and liar in out and "no (rebuilding)" in out  # every row printed
    code, out, err = dsdn(capsys, "status", "--url", "")
    assert (code, out) == (2, "") and one_line(err) == "dsdn status: --url: no URL given"
    cluster_file = tmp_path / "cluster.json"
    cluster_file.write_text(deep)
    code, out, err = dsdn(capsys, "status", "--cluster", str(cluster_file))
    assert (code, out) == (2, "") and "is not a cluster file" in one_line(err)


def test_a_terminal_that_cannot_show_a_character_is_no_fault_of_the_coordinator() -> None:
    """From a review: with an ASCII terminal, a character it cannot show (the CLI's own "…", a member's name) was
    "unexpected answer from the coordinator: UnicodeEncodeError", exit 1."""
    with lying_coordinator({"/system/info": (200, '{"coordinator_id": "c\\u00e4"}'),
                            "/state/root": (200, '{"root": "' + "ab" * 32 + '", "events_applied": 1, "pending": 0}'),
                            "/cluster/peers": (200, "[]"), "/ready": (200, '{"ready": true}')}) as url:
        done = run_dsdn("status", "--url", url, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "c\\xe4" in done.stdout


def ctrl_c_as_at_a_terminal() -> None:
    """SIGINT as a terminal's Ctrl-C finds it: a test run in the background (CI: a non-interactive shell's `&`)
    starts with SIGINT ignored, and children inherit that (Python then installs no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_and_a_closed_stdin_are_one_line(tmp_path: Path) -> None:
    """From a review: Ctrl-C while `dsdn receipt verify -` read stdin, and a closed stdin, were tracebacks; Ctrl-C
    while `dsdn cluster up` made its keys (before its signal handlers were in place) a screen of ExceptionGroup.
    The data folders it makes are for its user alone (they were 755, the databases in them readable by all)."""
    waiting = subprocess.Popen([sys.executable, "-c", "from deploy.cli import main; main()", "receipt", "verify", "-",
                                "--group-key", "00" * 32], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_as_at_a_terminal)
    time.sleep(1.5)  # (imports done: reading stdin)
    waiting.send_signal(signal.SIGINT)
    out, err = waiting.communicate(timeout=30)
    assert (waiting.returncode, out) == (130, "") and one_line(err) == "dsdn receipt verify: interrupted"
    done = subprocess.run(["bash", "-c", f'exec "{sys.executable}" -c "from deploy.cli import main; main()" receipt '
                                         f'verify - --group-key {"00" * 32} <&-'], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and one_line(done.stderr) == "dsdn receipt verify: stdin is closed: no JSON to read"
    data = tmp_path / "cluster"
    up = subprocess.Popen([sys.executable, "-c", "from deploy.cli import main; main()", "cluster", "up", "-n", "4",
                           "--base-port", str(free_port()), "--data-dir", str(data)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_as_at_a_terminal)
    deadline = time.monotonic() + 30
    while not list(data.glob("coordinator-*")) and time.monotonic() < deadline:  # in trio.run, making its keys
        time.sleep(0.002)
    up.send_signal(signal.SIGINT)
    out, err = up.communicate(timeout=60)
    # 130: interrupted before its signal handlers were in place; 0: stopped by them (a Ctrl-C once it runs)
    assert up.returncode in (0, 130) and "Traceback" not in err and "Traceback" not in out, err
    assert data.stat().st_mode & 0o077 == 0
    ident = tmp_path / "identity"
    assert run_dsdn("identity", "--data-dir", str(ident)).returncode == 0
    assert ident.stat().st_mode & 0o077 == 0
