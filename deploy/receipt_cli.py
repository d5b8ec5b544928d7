"""``dsdn receipt make|submit|get|list|verify``: usage receipts from the command line, and offline verification.

Offline (no coordinator is contacted):

* ``make``: a node key (created in ``--node-key`` if missing, 0600) and a receipt it signs, as JSON on stdout;
  the node's public key goes to stderr (register the node with it: ``dsdn nodes register ID … --public-key K``).
* ``verify FILE|- --group-key HEX``: check a signed document with nothing but the group key; prints
  ``{"valid", "reason"}``. Exit 0 valid, 1 invalid, 2 bad input (no such file, not JSON, not a document).

Against the cluster, as ``dsdn status|nodes|objects|placement`` (deploy/ctl.py, whose machinery they use): the
coordinators of ``--url`` (repeatable) or of ``--cluster`` (default ``.dsdn/cluster/cluster.json``), the first
that accepts a connection answering; the API token from ``--token`` or ``DSDN_API_TOKEN`` (submitting needs it
when the cluster has one; reading does not); a table for people, ``--json`` for scripts (the server's JSON as
it came); errors as ONE line on stderr, exit 1 (a coordinator answered with an error, or none could be reached)
or 2 (bad arguments, no cluster file):

* ``submit FILE|- [--wait-ms N]``: POST the receipt and wait up to N ms (default 5000, at most 30000) for the
  threshold signature. Final by then: the signed document (``--json``: exactly what ``verify`` checks, so
  ``dsdn receipt submit r.json --json > signed.json && dsdn receipt verify signed.json --group-key K``).
  Not final by then (the server's 202): the receipt IS accepted (locked: submitting it again changes nothing),
  so the exit code is still 0 and one line on stderr says it is not final yet and how to fetch it; stdout holds
  the server's ``{"receipt_id", "status", …}``. A script tells the two apart by ``status == "final"`` in the
  JSON (only a final document has ``signature``), and fetches the document later with ``get ID --json``. A
  slot conflict (409), an invalid or rejected receipt (422) or a cluster that cannot sign now (503) exit 1.
  The answer may take ``--wait-ms`` plus the server's own wait for its lock (≤ 10 s): ``--timeout`` counts on
  top of both.
* ``get ID``: a receipt: the signed document when final, else the receipt and its status. Unknown: exit 1.
* ``list [--node ID] [--epoch N] [--status S] [--after ID] [--limit N]``: one page of the receipts the
  coordinator knows, by receipt id; the next page starts ``--after`` the ``next_after`` it prints.

A stdout closed early (``dsdn receipt list --json | head -1``) ends the command quietly with exit 141.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx
import nacl.signing

from api.limits import LOCK_WAIT_S as SERVER_LOCK_WAIT_S
from api.limits import MAX_LIMIT, MAX_WAIT_MS, STATUSES, unique_names
from api.limits import RECEIPT_ID as _RID
from consensus import receipts as rc
from deploy import ctl

# ---- offline: make, verify -----------------------------------------------------------------------------------

def _read_json(source: str) -> Any:
    where = "stdin" if source == "-" else source
    if source == "-" and sys.stdin is None:  # (started with stdin closed: an AttributeError traceback)
        raise ValueError("stdin is closed: no JSON to read")
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except UnicodeDecodeError as exc:  # (a ValueError: it was printed without the file's name)
        raise ValueError(f"{where} is not JSON: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():  # (an empty file, say a failed submit's output: "Expecting value: line 1 column 1")
        raise ValueError(f"{where} is empty: no JSON in it")
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=unique_names)
        json.dumps(value, ensure_ascii=False).encode()  # (a lone surrogate: sent, it failed in the client)
        return value
    except RecursionError:  # (not a ValueError: it gave a traceback)
        raise ValueError(f"{where}: the JSON is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeEncodeError) as exc:
        raise ValueError(f"{where} is not JSON: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{where} is not JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    """NaN and Infinity: Python's json takes them, JSON has no such numbers (sent, they failed in the client and
    were reported as the coordinator's fault, exit 1: a reviewer's reproduction)."""
    raise ValueError(f"{name} is not a JSON number")


def _node_key(path: Path) -> tuple[nacl.signing.SigningKey, bool]:
    """The node key kept at ``path``, or a new one (True: to be written with ``_keep_key`` once used)."""
    if path.exists():
        raw = path.read_bytes()
        if len(raw) != 32:
            raise ValueError(f"{path}: expected a 32-byte Ed25519 seed")
        return nacl.signing.SigningKey(raw), False
    return nacl.signing.SigningKey.generate(), True


def _keep_key(path: Path, key: nacl.signing.SigningKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bytes(key))


def make(args: argparse.Namespace) -> dict[str, Any]:
    """A receipt signed by the node key; a new key is written only once the receipt is made (a bad argument left
    a key file behind, for a receipt never made)."""
    path = Path(args.node_key)
    key, new = _node_key(path)
    epoch = args.epoch if args.epoch is not None else int(time.time() // args.epoch_length) + 1
    commitment = None
    subject = args.subject
    if args.type == "compute":
        subject = subject or secrets.token_hex(32)
        commitment = [subject, *(secrets.token_hex(32) for _ in range(5))]
    receipt = rc.sign_as_node(key, receipt_type=args.type, node_id=args.node, subject=subject, epoch=epoch,
                              usage_proof_hash=args.proof or secrets.token_hex(32), execution_commitment=commitment,
                              reward_base=args.reward, submitter_address=args.submitter, timestamp=int(time.time()))
    if new:
        _keep_key(path, key)
    print(f"node public key: {bytes(key.verify_key).hex()}", file=sys.stderr)
    return receipt.to_json()


def _offline(args: argparse.Namespace) -> int:
    prog = f"dsdn receipt {args.action}"
    try:
        if args.action == "make":
            if args.type == "storage" and not args.subject:
                print(f"{prog}: error: --subject is required for a storage receipt (see --help)", file=sys.stderr)
                return 2
            print(json.dumps(make(args), indent=2))
            code = 0
        else:
            valid, reason = rc.verify_document(_read_json(args.target), bytes.fromhex(args.group_key))
            print(json.dumps({"valid": valid, "reason": reason}))
            not_a_document = reason.startswith(("malformed document", "the document is not"))
            code = 0 if valid else 2 if not_a_document else 1
        sys.stdout.flush()
    except BrokenPipeError:
        return ctl.stdout_closed()
    except OSError as exc:
        ctl._fail_line(f"{prog}: {exc.filename or 'standard output'}: {exc.strerror or exc}")
        return 2
    except (ValueError, rc.ReceiptError) as exc:
        ctl._fail_line(f"{prog}: {exc}")
        return 2
    except KeyboardInterrupt:  # (waiting on stdin: a traceback)
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return code


# ---- against the cluster: submit, get, list ---------------------------------------------------------------------

def _short(value: Any, n: int = 16) -> Any:
    return value[:n] + "…" if isinstance(value, str) and len(value) > n else value


def _receipt_rows(doc: dict[str, Any]) -> list[list[Any]]:
    """FIELD/VALUE rows of a receipt document (final or not) or of a submission's 202 answer."""
    receipt = doc.get("receipt") if isinstance(doc.get("receipt"), dict) else {}
    batch = doc.get("batch") if isinstance(doc.get("batch"), dict) else {}
    signers = doc.get("signers")
    rows: list[list[Any]] = [
        ["receipt_id", doc["receipt_id"]], ["status", doc["status"]], ["type", receipt.get("receipt_type")],
        ["node", receipt.get("node_id")], ["subject", receipt.get("subject")],
        ["epoch", doc.get("epoch", receipt.get("epoch"))],
        ["signers", ", ".join(map(str, signers)) if isinstance(signers, list) else signers],
        ["batch_root", _short(batch.get("root"))]]
    rows += [[key, doc[key]] for key in ("reason", "conflicting_receipt_id") if doc.get(key)]
    return rows


def _is_document(answer: Any) -> bool:
    return isinstance(answer, dict) and answer.get("status") == "final" and "signature" in answer


def submit(args: argparse.Namespace, client: ctl.Client) -> int:
    try:
        body = _read_json(args.target)
    except OSError as exc:
        raise ctl.CtlError(f"cannot read {args.target}: {exc.strerror or exc}", 2) from None
    except ValueError as exc:  # (_read_json's message names the file)
        raise ctl.CtlError(str(exc), 2) from None
    if not isinstance(body, dict):
        raise ctl.CtlError(f"{args.target}: a receipt is a JSON object (from `dsdn receipt make`)", 2)
    found = ctl.targets(args)
    # the answer may take the wait plus the server's own wait for its durable lock: --timeout on top of both
    read_s = args.timeout + args.wait_ms / 1000 + SERVER_LOCK_WAIT_S
    target, answer = client.call("POST", found, "/receipts", ok=(200, 202), params={"wait_ms": args.wait_ms},
                                 json=body, timeout=httpx.Timeout(args.timeout, read=read_s))
    if args.json:
        ctl._print_json(answer)
    else:
        print(ctl.table(["FIELD", "VALUE"], _receipt_rows(answer)))
    if not _is_document(answer):
        rid = answer["receipt_id"]
        when = "yet" if answer["status"] != "final" else f"in the answer (--wait-ms {args.wait_ms})"
        sys.stdout.flush()
        ctl._fail_line(f"dsdn receipt submit: receipt {rid} accepted by {target.id}, status {answer['status']}: "
                       f"no signed document {when}; fetch it later with `dsdn receipt get {rid}`")
    return 0


def get(args: argparse.Namespace, client: ctl.Client) -> int:
    _, doc = client.call("GET", ctl.targets(args), f"/receipts/{ctl._segment(args.id)}")
    if args.json:
        ctl._print_json(doc)
    else:
        print(ctl.table(["FIELD", "VALUE"], _receipt_rows(doc)))
    return 0


def list_receipts(args: argparse.Namespace, client: ctl.Client) -> int:
    params = {k: v for k, v in (("node", args.node), ("epoch", args.epoch), ("status", args.status),
                                ("after", args.after), ("limit", args.limit)) if v is not None}
    _, page = client.call("GET", ctl.targets(args), "/receipts", params=params)
    if args.json:
        ctl._print_json(page)
        return 0
    docs = page["receipts"]
    if not docs:
        print("no receipts" + (" after " + args.after if args.after else ""))
    else:
        print(ctl.table(["RECEIPT ID", "STATUS", "TYPE", "NODE", "SUBJECT", "EPOCH", "BATCH ROOT"], [
            [d["receipt_id"], d["status"], d["receipt"]["receipt_type"], d["receipt"]["node_id"],
             _short(d["receipt"]["subject"]), d["epoch"], _short((d.get("batch") or {}).get("root"))]
            for d in docs]))
    if page.get("next_after"):
        print(f"\nmore: dsdn receipt list … --after {page['next_after']}")
    return 0


# ---- arguments --------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    common = ctl.common_parser()
    top = argparse.ArgumentParser(prog="dsdn receipt", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="action", required=True)
    mk = sub.add_parser("make", help="a node key and a receipt it signs (JSON on stdout; offline)")
    mk.add_argument("--node-key", default=".dsdn/node.key", help="the node's Ed25519 seed (created if missing)")
    mk.add_argument("--node", required=True, help="the node's registry id")
    mk.add_argument("--type", choices=rc.TYPES, default="storage")
    mk.add_argument("--subject", help="storage: a registered object hash; compute: a workload id (64 hex)")
    mk.add_argument("--epoch", type=int, help="default: the current epoch")
    mk.add_argument("--epoch-length", type=int, default=3600, help="EPOCH_LENGTH_S of the cluster")
    mk.add_argument("--reward", type=int, default=1000)
    mk.add_argument("--submitter", default="00" * 20, help="40 hex characters")
    mk.add_argument("--proof", help="usage proof hash (64 hex; default random)")
    sm = sub.add_parser("submit", parents=[common], help="submit a receipt and wait for its threshold signature")
    sm.add_argument("target", metavar="FILE", help="the receipt (from `dsdn receipt make`): a file, or - for stdin")
    sm.add_argument("--wait-ms", type=int, default=5000,
                    help=f"wait up to this long for the signed document (default 5000, at most {MAX_WAIT_MS}; "
                         "0: do not wait)")
    gt = sub.add_parser("get", parents=[common], help="a receipt: the signed document when final, else its status")
    gt.add_argument("id", help="the receipt id (64 hex)")
    ls = sub.add_parser("list", parents=[common], help="a page of receipts, by receipt id")
    ls.add_argument("--node", help="only this node's receipts")
    ls.add_argument("--epoch", type=int, help="only this epoch's")
    ls.add_argument("--status", choices=STATUSES, help="only receipts in this status")
    ls.add_argument("--after", metavar="ID", help="start after this receipt id (the previous page's next_after)")
    ls.add_argument("--limit", type=int, help=f"receipts per page, 1..{MAX_LIMIT} (server default 100)")
    vf = sub.add_parser("verify", help="verify a signed document offline (exit 0 valid, 1 invalid, 2 bad input)")
    vf.add_argument("target", metavar="FILE", help="the document: a file, or - for stdin")
    vf.add_argument("--group-key", required=True, help="the cluster's group public key (64 hex)")
    return top


def _bad_argument(args: argparse.Namespace) -> str | None:
    if args.action == "make" and args.epoch_length < 1:  # (checked before the node key is made)
        return "--epoch-length must be 1 or more"
    if args.action == "verify" and not _RID.fullmatch(args.group_key):  # (a short key read as "another group key")
        return "--group-key must be the group's public key: 64 hex characters"
    if args.action in ("make", "verify"):
        return None
    if not 0 < args.timeout <= ctl.MAX_TIMEOUT_S:
        return f"--timeout must be above 0 and at most {ctl.MAX_TIMEOUT_S:.0f}"
    if args.action == "submit" and not 0 <= args.wait_ms <= MAX_WAIT_MS:
        return f"--wait-ms must be from 0 to {MAX_WAIT_MS}"
    if args.action == "list":
        if args.limit is not None and not 1 <= args.limit <= MAX_LIMIT:
            return f"--limit must be from 1 to {MAX_LIMIT}"
        if args.epoch is not None and args.epoch < 1:
            return "--epoch must be 1 or more"
        if args.after is not None and not _RID.fullmatch(args.after):
            return "--after must be a receipt id (64 hex characters)"
    return None


def main(argv: list[str]) -> NoReturn:
    p = parser()
    ctl._one_line_errors(p)
    args = p.parse_args(argv)
    prog = f"dsdn receipt {args.action}"
    bad = _bad_argument(args)
    if bad:
        print(f"{prog}: error: {bad}", file=sys.stderr)
        sys.exit(2)
    if args.action in ("make", "verify"):
        sys.exit(_offline(args))
    ctl.execute(prog, args, {"submit": submit, "get": get, "list": list_receipts}[args.action])
