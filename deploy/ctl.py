"""``dsdn status|nodes|objects|placement``: the cluster's HTTP API from the command line, as ``ipfs-cluster-ctl``.

Owns the client side of the coordinators' HTTP API for people and scripts:

* ``status``: one row per coordinator: ready, state root prefix, events applied, DA status, peers up, receipts
  final; a root that differs from the majority's is marked ``*``. Exit 1 if any coordinator cannot be reached.
* ``nodes list`` / ``nodes get ID`` / ``nodes register ID --zone Z --addr HOST:PORT [--capacity-gb N]
  [--public-key HEX]``.
* ``objects register HASH --size N`` / ``objects get HASH``.
* ``placement HASH [--rf N]``: the replica placement, best first.

The cluster: ``--url URL`` (repeatable, or comma-separated), else the coordinators that ``dsdn cluster up``
listed in ``--cluster`` (default ``.dsdn/cluster/cluster.json``). ``status`` asks every coordinator; the other
commands ask the first one that accepts a connection (a request that reached a coordinator is never sent to
another). The API token: ``--token`` or ``DSDN_API_TOKEN``. Tables for people, ``--json`` for scripts (the
server's JSON as it came; ``status``: ``{"coordinators": [...], "majority_root", "unreachable"}``).

Errors are ONE line on stderr, never a traceback. Exit codes: 0 done; 1 a coordinator answered with an error
(the line carries its status and JSON message) or none could be reached; 2 bad arguments or no cluster to ask;
141 stdout was closed before the output was written (``dsdn status --json | head -1``: no traceback, the rest
of the output is dropped). ``dsdn receipt submit|get|list`` (deploy/receipt_cli.py) run on the same machinery
(``common_parser``, ``targets``, ``Client.call``, ``execute``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx

DEFAULT_CLUSTER_FILE = Path(".dsdn/cluster/cluster.json")
DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 3600.0  # (inf or nan overflowed in the HTTP client: a traceback)
TOKEN_ENV = "DSDN_API_TOKEN"
COMMANDS = ("status", "nodes", "objects", "placement")
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE, as a shell reports `cmd | head -1` killed by SIGPIPE


class CtlError(Exception):
    """Ends the command with this one line on stderr and ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Target:
    """A coordinator to ask: its id (from cluster.json, or its URL until /system/info names it) and base URL."""

    id: str
    url: str


# ---- finding the cluster ------------------------------------------------------------------------------

def targets(args: argparse.Namespace) -> list[Target]:
    """The coordinators: --url, else the coordinator entries of the cluster file."""
    if args.url:
        urls = [u.strip().rstrip("/") for given in args.url for u in given.split(",") if u.strip()]
        if not urls:  # (an unset variable: `status` asked no one and said all was well, exit 0)
            raise CtlError("--url: no URL given", 2)
        for url in urls:
            if not url.startswith(("http://", "https://")) or not _usable(url):
                raise CtlError(f"--url {url!r}: expected an http:// or https:// URL with a host (and a valid port)", 2)
        return [Target(url, url) for url in urls]
    path = Path(args.cluster)
    if not path.exists():
        raise CtlError(f"no cluster file at {path} (start a cluster with `dsdn cluster up`, or pass --url)", 2)
    try:
        processes = json.loads(path.read_text())["processes"]
        found = [Target(str(p["id"]), str(p["url"]).rstrip("/")) for p in processes if p.get("role") == "coordinator"]
    except OSError as exc:
        raise CtlError(f"cannot read {path}: {exc.strerror or exc}", 2) from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise CtlError(f"{path} is not a cluster file written by `dsdn cluster up`", 2) from None
    if not found:
        raise CtlError(f"{path} lists no coordinator", 2)
    for target in found:
        if not _usable(target.url):
            raise CtlError(f"{path}: coordinator {target.id}'s URL {target.url!r} is not a usable http(s) URL", 2)
    return found


def _usable(url: str) -> bool:
    """An http(s) URL httpx can send a request to (``http://[::1`` or a bad port raised httpx.InvalidURL from the
    first request: a traceback)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host) and (parsed.port is None or
                                                                          0 < parsed.port < 65536)


# ---- talking to a coordinator ---------------------------------------------------------------------------

def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__})"
    cause: BaseException = exc
    for _ in range(10):  # the OS error under httpx's own
        inner = cause.__cause__ or cause.__context__
        if inner is None:
            break
        cause = inner
    text = getattr(cause, "strerror", None) or str(cause) or str(exc) or type(exc).__name__
    return text.removeprefix("[Errno 111] ")


def _error_text(response: httpx.Response) -> str:
    """``HTTP <status>: <error>: <message>`` from the server's JSON error body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("error" in body or "message" in body):
        error, message = body.get("error"), body.get("message")
        parts = [str(p) for p in (error, message) if p not in (None, "")]
        if len(parts) == 2 and parts[0] == parts[1]:
            parts = parts[:1]
        detail = ": ".join(parts)
        extra = {k: v for k, v in body.items() if k not in ("error", "message", "success")}
        if extra:
            detail += " (" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")"
    else:
        detail = (response.text.strip().splitlines() or ["(no JSON body)"])[0][:200]
    text = f"HTTP {response.status_code} {response.request.method} {response.request.url.path}: {detail}"
    if response.status_code == 401:  # (a token given and refused is not a token missing: a fresh user's run)
        text += (f" (the token given was refused: check --token or {TOKEN_ENV})"
                 if "Authorization" in response.request.headers else f" (pass --token or set {TOKEN_ENV})")
    return text


class _OutOfTime(BaseException):
    """Raised by the alarm that bounds a request (a BaseException: nothing on the way may take it for its own)."""


def _out_of_time(signum: int, frame: Any) -> None:
    raise _OutOfTime


class Client:
    """A sync httpx client with timeouts and the bearer token on every request."""

    def __init__(self, token: str | None, timeout_s: float) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """The whole exchange within ``timeout_s``: httpx's timeout bounds each read, so an answer sent a byte a
        second kept a command running far past --timeout (a reviewer's reproduction); or within a longer read
        timeout given for this call (an answer the server holds back on purpose: `receipt submit --wait-ms`, whose
        answer after the default 5 s wait always came past the default --timeout 5: "no answer in time")."""
        timeout = kw.get("timeout")
        read_s = timeout.read if isinstance(timeout, httpx.Timeout) and timeout.read is not None else 0.0
        budget = max(self.timeout_s, read_s)
        deadline = time.monotonic() + budget
        # An alarm bounds the headers too (an answer's headers sent a byte a second kept a command running for
        # ever, the chunk loop below not reached yet: a reviewer's reproduction); main thread only, as signals are
        try:
            previous = signal.signal(signal.SIGALRM, _out_of_time)
        except ValueError:
            previous = None
        else:
            signal.setitimer(signal.ITIMER_REAL, budget + 0.5)  # (the chunk loop's own check first, if it runs)
        try:
            with self.http.stream(method, url, **kw) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout(f"no whole answer within {budget:g}s", request=response.request)
                headers = [(k, v) for k, v in response.headers.multi_items()
                           if k.lower() not in ("content-encoding", "transfer-encoding", "content-length")]
                return httpx.Response(response.status_code, headers=headers, content=bytes(body),
                                      request=response.request)
        except _OutOfTime:
            raise httpx.ReadTimeout(f"no whole answer within {budget:g}s") from None
        finally:
            if previous is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)

    def call(self, method: str, found: list[Target], path: str, ok: tuple[int, ...] = (200,),
             **kw: Any) -> tuple[Target, Any]:
        """``method path`` on the first coordinator that accepts a connection; its JSON answer. Only a refused
        connection moves on to the next (such a request never arrived); an answer outside ``ok`` is a CtlError."""
        problems: list[str] = []
        for target in found:
            try:
                response = self.request(method, target.url + path, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                problems.append(f"{target.url}: {_describe(exc)}")
                continue
            except httpx.HTTPError as exc:
                raise CtlError(f"{target.url}: {_describe(exc)}") from None
            if response.status_code not in ok:
                raise CtlError(f"{target.url}: {_error_text(response)}")
            try:
                return target, response.json()
            except ValueError:
                raise CtlError(f"{target.url}: {method} {path} answered {response.status_code} without JSON") from None
        raise CtlError(("coordinator unreachable: " if len(found) == 1 else "no coordinator reachable: ")
                       + "; ".join(problems))


# ---- status ---------------------------------------------------------------------------------------------

def _status_of(client: Client, target: Target) -> dict[str, Any]:
    """One coordinator's row; ``error`` set (and the rest None) when it cannot be reached."""
    row: dict[str, Any] = {"id": target.id, "url": target.url, "reachable": True, "error": None, "ready": None,
                           "ready_reason": None, "root": None, "events_applied": None, "pending": None,
                           "da_status": None, "peers_up": None, "peers_total": None, "receipts_final": None,
                           "root_matches_majority": None}

    def get(path: str, ok: tuple[int, ...] = (200,)) -> Any:
        response = client.request("GET", target.url + path)
        if response.status_code not in ok:
            raise CtlError(_error_text(response))
        return response.json()

    try:
        ready = get("/ready", (200, 503))
        row["ready"] = ready.get("ready") is True
        row["ready_reason"] = ready.get("reason")
        if "progress" in ready:
            row["progress"] = ready["progress"]
        if not isinstance(row.get("progress", {}), dict):
            raise TypeError("/ready's progress is no object")
        root = get("/state/root")
        if type(root["root"]) is not str or type(root["events_applied"]) is not int:  # (a list blanked the table)
            raise TypeError("/state/root's root is no string or its events_applied no integer")
        row["root"], row["events_applied"], row["pending"] = root["root"], root["events_applied"], root["pending"]
        info = get("/system/info")
        row["id"] = info.get("coordinator_id") or target.id
        da = str(info.get("da_status", ""))
        row["da_status"] = da[3:-1] if da.startswith("Ok(") and da.endswith(")") else da
        peers = get("/cluster/peers")
        row["peers_up"] = sum(1 for p in peers if p.get("state") == "up")
        row["peers_total"] = len(peers)
        receipts = get("/cluster/status").get("receipts")
        row["receipts_final"] = receipts.get("final") if isinstance(receipts, dict) else None
    except httpx.HTTPError as exc:
        row["reachable"] = False
        row["error"] = _describe(exc)
    except CtlError as exc:
        row["error"] = str(exc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        row["error"] = f"unexpected answer: {type(exc).__name__}: {exc}"
    except RecursionError:
        row["error"] = "unexpected answer: JSON nested too deeply"
    return row


def status(client: Client, found: list[Target]) -> dict[str, Any]:
    rows = [_status_of(client, t) for t in found]
    roots = Counter(r["root"] for r in rows if r["root"] is not None)
    top = roots.most_common(1)
    # the majority: a root held by more than half of the coordinators that told theirs
    majority = top[0][0] if top and top[0][1] * 2 > sum(roots.values()) else None
    for r in rows:
        if r["root"] is not None:
            r["root_matches_majority"] = r["root"] == majority
    return {"coordinators": rows, "majority_root": majority, "unreachable": sum(not r["reachable"] for r in rows)}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return printable(str(value))


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped: ids, zones and addresses come from the
    cluster's members (a lying one's events too), and reached the terminal raw (escape sequences cleared the
    screen or set the title, a newline forged a table row, U+202E reversed one: a reviewer's reproduction)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else c.encode("unicode_escape").decode()
                                                   for c in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def status_table(report: dict[str, Any]) -> str:
    rows = []
    for r in report["coordinators"]:
        root = None if r["root"] is None else r["root"][:16] + (" *" if r["root_matches_majority"] is False else "")
        peers = None if r["peers_up"] is None else f"{r['peers_up']}/{r['peers_total']}"
        ready = "unreachable" if not r["reachable"] else ("error" if r["ready"] is None else r["ready"])
        if r["ready"] is False and r.get("progress"):  # rebuilding from DA: say how long it should take
            eta = r["progress"].get("eta_s")
            known = type(eta) in (int, float) and math.isfinite(eta)
            ready = "no (rebuilding" + (f", ETA {eta:.0f}s" if known else "") + ")"
        rows.append([r["id"], ready, root, r["events_applied"], r["da_status"], peers, r["receipts_final"]])
    out = table(["ID", "READY", "ROOT", "EVENTS", "DA", "PEERS UP", "RECEIPTS FINAL"], rows)
    marked = [r for r in report["coordinators"] if r["root_matches_majority"] is False]
    if marked:
        majority = report["majority_root"]
        out += "\n\n* root differs from the majority" + (
            f" ({majority[:16]})" if majority else " (no root is held by a majority)")
    return out


# ---- the commands -----------------------------------------------------------------------------------------

def _fail_line(text: str) -> None:
    """The error, as one line on stderr (a server's message could hold a newline)."""
    print(" ".join(printable(part) for part in text.split()), file=sys.stderr)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def run(args: argparse.Namespace, client: Client) -> int:
    found = targets(args)
    if args.command == "status":
        report = status(client, found)
        if args.json:
            _print_json(report)
        else:
            print(status_table(report))
        failed = [r for r in report["coordinators"] if r["error"] is not None]
        if failed:
            names = ", ".join(f"{r['id']} ({r['error']})" for r in failed)
            what = "unreachable" if all(not r["reachable"] for r in failed) else "unreachable or failing"
            _fail_line(f"dsdn status: {len(failed)} of {len(found)} coordinators {what}: {names}")
            return 1
        return 0
    if args.command == "nodes":
        if args.action == "list":
            _, nodes = client.call("GET", found, "/nodes")
            if args.json:
                _print_json(nodes)
            elif not nodes:
                print("no nodes registered")
            else:
                print(table(["ID", "ZONE", "ADDR", "CAPACITY_GB", "PUBLIC KEY"], [
                    [n["id"], n["zone"], n["addr"], n["capacity_gb"],
                     n["public_key"][:16] + "…" if n.get("public_key") else None] for n in nodes]))
        elif args.action == "get":
            _, node = client.call("GET", found, f"/node/{_segment(args.id)}")
            if args.json:
                _print_json(node)
            else:
                print(table(["FIELD", "VALUE"], [[k, json.dumps(v) if isinstance(v, dict) else v]
                                                 for k, v in node.items()]))
        else:
            body: dict[str, Any] = {"id": args.id, "zone": args.zone, "addr": args.addr}
            if args.capacity_gb is not None:
                body["capacity_gb"] = args.capacity_gb
            if args.public_key is not None:
                body["public_key"] = args.public_key
            target, answer = client.call("POST", found, "/register", json=body)
            if args.json:
                _print_json(answer)
            else:
                print(f"node {args.id} registered (via {target.id})")
        return 0
    if args.command == "objects":
        if args.action == "register":
            target, answer = client.call("POST", found, "/object/register", json={"hash": args.hash, "size": args.size})
            if args.json:
                _print_json(answer)
            else:
                print(f"object {args.hash} registered (via {target.id})")
        else:
            _, obj = client.call("GET", found, f"/object/{_segment(args.hash)}")
            if args.json:
                _print_json(obj)
            else:
                print(table(["FIELD", "VALUE"], [["hash", obj["hash"]], ["size", obj["size"]],
                                                 ["replicas", ", ".join(obj["replicas"]) or "none"]]))
        return 0
    # placement
    _, chosen = client.call("GET", found, f"/placement/{_segment(args.hash)}", params={"rf": args.rf})
    if args.json:
        _print_json(chosen)
        return 0
    zones: dict[str, str] = {}
    try:  # the zones make the table worth reading; a failure here is no reason to fail the command
        _, nodes = client.call("GET", found, "/nodes")
        zones = {n["id"]: n["zone"] for n in nodes}
    except (CtlError, httpx.HTTPError, KeyError, TypeError):
        pass
    if not chosen:
        print("no node to place on (no node registered)")
    else:
        print(table(["RANK", "NODE", "ZONE"], [[i, nid, zones.get(nid)] for i, nid in enumerate(chosen, 1)]))
    return 0


def _segment(value: str) -> str:
    """A path segment, percent-encoded (an id with a ``/`` or ``?`` stays one segment)."""
    from urllib.parse import quote

    return quote(value, safe="")


# ---- argument parsing -------------------------------------------------------------------------------------

def common_parser() -> argparse.ArgumentParser:
    """The options every client command takes (a ``parents=`` parser; ``dsdn receipt`` shares it)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", action="append", metavar="URL",
                        help="a coordinator's base URL (repeat, or comma-separate, for several); default: the "
                             "coordinators of --cluster")
    common.add_argument("--cluster", default=str(DEFAULT_CLUSTER_FILE), metavar="FILE",
                        help=f"cluster.json written by `dsdn cluster up` (default {DEFAULT_CLUSTER_FILE})")
    common.add_argument("--token", help=f"API token (default: ${TOKEN_ENV})")
    common.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")
    common.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"seconds per HTTP request (default {DEFAULT_TIMEOUT_S:g})")
    return common


def parser() -> argparse.ArgumentParser:
    common = common_parser()
    top = argparse.ArgumentParser(prog="dsdn", description="The cluster's HTTP API from the command line.")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[common], help="one row per coordinator: ready, root, events, DA, peers, "
                   "receipts final")
    nodes = sub.add_parser("nodes", help="`dsdn nodes list|get|register`").add_subparsers(dest="action",
                                                                                          required=True)
    nodes.add_parser("list", parents=[common], help="every registered node")
    get = nodes.add_parser("get", parents=[common], help="one node")
    get.add_argument("id")
    reg = nodes.add_parser("register", parents=[common], help="register or update a node")
    reg.add_argument("id")
    reg.add_argument("--zone", required=True)
    reg.add_argument("--addr", required=True, help="host:port")
    reg.add_argument("--capacity-gb", type=int, help="default (server): 100")
    reg.add_argument("--public-key", help="the node's Ed25519 public key (64 hex), for usage receipts")
    objects = sub.add_parser("objects", help="`dsdn objects register|get`").add_subparsers(dest="action",
                                                                                            required=True)
    oreg = objects.add_parser("register", parents=[common], help="register an object (again: update its size)")
    oreg.add_argument("hash")
    oreg.add_argument("--size", type=int, required=True, help="bytes")
    oget = objects.add_parser("get", parents=[common], help="an object and its replicas")
    oget.add_argument("hash")
    place = sub.add_parser("placement", parents=[common], help="replica placement of a hash")
    place.add_argument("hash")
    place.add_argument("--rf", type=int, default=3, help="replicas, 1..64 (default 3)")
    return top


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (``dsdn <command>: error: …``), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _one_line_errors(p: argparse.ArgumentParser) -> None:
    p.__class__ = _OneLineParser
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _one_line_errors(child)


def stdout_closed() -> int:
    """stdout's reader went away (``dsdn … | head -1``): the rest of the output goes to /dev/null (so that
    Python's own flush at exit fails no more), no traceback; the exit code a shell gives a command killed by
    SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_STDOUT_CLOSED


def execute(prog: str, args: argparse.Namespace, command: Callable[[argparse.Namespace, Client], int]) -> NoReturn:
    """Run ``command(args, client)`` and exit with its code; every failure ends as one line on stderr."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is not None and not (token.isascii() and token.isprintable()):
        _fail_line(f"{prog}: the token (--token or {TOKEN_ENV}) must be visible ASCII characters, as the "
                   "coordinator's COORDINATOR_API_TOKEN is")
        sys.exit(2)
    client = Client(token, args.timeout)
    if isinstance(sys.stdout, io.TextIOWrapper):  # (a terminal that cannot show "…": blamed on the coordinator)
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        code = command(args, client)
        sys.stdout.flush()  # a closed stdout shows here, not in the interpreter's flush at exit
    except BrokenPipeError:
        code = stdout_closed()
    except OSError as exc:  # any other failure of the output (a full disk: ENOSPC), or of a local file
        if exc.filename is None:
            stdout_closed()  # (the output cannot take Python's flush at exit either)
        _fail_line(f"{prog}: {exc.filename if exc.filename else 'standard output'}: {exc.strerror or exc}")
        code = 1
    except CtlError as exc:
        _fail_line(f"{prog}: {exc}")
        code = exc.code
    except httpx.HTTPError as exc:  # anything call() did not turn into a CtlError
        _fail_line(f"{prog}: {_describe(exc)}")
        code = 1
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # an answer of an unexpected shape
        _fail_line(f"{prog}: unexpected answer from the coordinator: {type(exc).__name__}: {exc}")
        code = 1
    except RecursionError:  # (not a ValueError: a traceback)
        _fail_line(f"{prog}: unexpected answer from the coordinator: JSON nested too deeply")
        code = 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    finally:
        client.close()
    sys.exit(code)


def main(argv: list[str]) -> None:
    p = parser()
    _one_line_errors(p)
    args = p.parse_args(argv)
    prog = f"dsdn {args.command}" + (f" {args.action}" if getattr(args, "action", None) else "")
    bad = (f"--timeout must be above 0 and at most {MAX_TIMEOUT_S:.0f}" if not 0 < args.timeout <= MAX_TIMEOUT_S else
           "--rf must be from 1 to 64" if args.command == "placement" and not 1 <= args.rf <= 64 else None)
    if bad:
        print(f"{prog}: error: {bad}", file=sys.stderr)
        sys.exit(2)
    execute(prog, args, run)
