"""The HTTP contract, fuzzed: schemathesis runs every operation that /openapi.json lists against a real
Hypercorn socket on 127.0.0.1 (the coordinator app with its API token set and a quorum validator hosted,
so the document lists every route the app can serve), with positive and negative data, every check and
every phase (coverage, fuzzing, stateful), and must find nothing: no server error, no schema-valid request
refused, no invalid request accepted, no undocumented status, header or body, a 405 with ``Allow``. The
run's configuration (CONFIG) says what it tolerates, and why: documented 503s, and schema-valid receipts
that are not valid receipts.

The seed is fixed so a run is reproducible; ``DSDN_FUZZ_SEED`` and ``DSDN_FUZZ_EXAMPLES`` (per operation)
explore further. Its cases and findings are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import trio
from hypercorn.trio import serve

from api.app import create_app
from api.blobstore import BlobStore
from node.config import Config
from node.process import hypercorn_config
from tests.conftest import start

TOKEN = "contract-test-token"
SEED = int(os.environ.get("DSDN_FUZZ_SEED", "20260801"))
EXAMPLES = int(os.environ.get("DSDN_FUZZ_EXAMPLES", "30"))
# A 503 is a documented answer (no DA layer takes writes; no cluster key to sign receipts with), not a crash;
# status_code_conformance still requires each operation to document it. Any other 5xx is a finding.
CONFIG = """
[checks]
enabled = true  # every check (what --checks all selects, but leaves the per-operation setting below effective)

[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]

# A receipt is only valid with its node's Ed25519 signature over its bytes, and a compute receipt's subject
# must equal execution_commitment[0]: rules JSON Schema cannot state. A schema-valid body is therefore not a
# valid receipt, and 422 is the right answer to it; every other check still runs on this operation.
[[operations]]
include-path = "/receipts"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""


async def test_every_documented_route_holds_its_contract_under_fuzzing(
        nursery: trio.Nursery, make_config: Callable[..., Config], tmp_path: Path) -> None:
    coord = await start(nursery, make_config(COORDINATOR_API_TOKEN=TOKEN))
    validator = BlobStore(tmp_path / "validator")
    app = create_app(coord, validator)
    stop = trio.Event()
    binds = await nursery.start(partial(serve, app, hypercorn_config("127.0.0.1", 0), shutdown_trigger=stop.wait))
    base = binds[0]
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        documented = (await http.get("/openapi.json")).json()["paths"]
    operations = {(m.upper(), p) for p, ops in documented.items() for m in ops}
    report = tmp_path / "schemathesis.json"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{base}/openapi.json",
           "--mode", "all", "--phases", "examples,coverage,fuzzing,stateful",
           "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--generation-database", "none",
           "--request-timeout", "10", "--header", f"Authorization: Bearer {TOKEN}", "--no-color",
           "--report", "json", "--report-json-path", str(report)]
    started = trio.current_time()
    with trio.fail_after(240):
        run = await trio.run_process(cmd, cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False)
    elapsed = trio.current_time() - started
    stop.set()
    validator.close()
    output = run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace")
    assert report.exists(), output[-5000:]
    result = json.loads(report.read_text())
    cases = result["test_cases"]["generated"]
    print(f"schemathesis {result['schemathesis_version']}: {len(operations)} documented operations, "
          f"{result['operations']['tested']} tested, {cases} cases, "
          f"{result['test_cases']['unique_failures']} findings, "
          f"{len(result['errors'])} errors in {elapsed:.1f}s (seed {SEED})")
    assert result["failures"] == [] and result["errors"] == [], output[-20000:]
    assert run.returncode == 0, output[-20000:]
    # every operation but the document itself (schemathesis does not fuzz the schema's own URL)
    assert result["operations"]["tested"] == result["operations"]["total"] == len(operations) - 1
    assert {("POST", "/quorum/v1/blobs"), ("POST", "/cluster/dkg")} <= operations
    assert all(status["status"] in ("success", "skip") for status in result["phases"].values()), result["phases"]
    assert result["phases"]["coverage"]["status"] == result["phases"]["fuzzing"]["status"] == "success"
    assert result["warnings"]["unsupported_regex"] == []  # every published pattern was understood
    assert cases >= 20 * len(operations)
