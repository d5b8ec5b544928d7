"""What every long-running process of ours shares (coordinator, devnet, blob store, cluster launcher):
logging set-up (LOG_LEVEL; LOG_FORMAT ``text``, the default, or ``json``: one object per line with time,
level, logger, coordinator id, message and the structured fields a call passes in ``extra=``), a graceful
stop on SIGTERM/SIGINT/SIGHUP (hypercorn under trio installs no handlers) or when the launcher is gone, a lock
on the data folder, and start-up failures turned into one line on stderr and an exit code instead of a
traceback."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import math
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import TCPServer
from trio.lowlevel import RunVar

from node.config import ConfigError, log_format, log_level
from node.identity import KeyFileError
from protocol.manager import host_port

log = logging.getLogger("dsdn.process")


def tune_gc() -> None:
    """A coordinator holds a large, long-lived heap (the state): collect the young generation less
    often, so a rebuild of millions of events does not spend a fifth of its time in the collector."""
    gc.set_threshold(50_000, 20, 20)


KEEP_ALIVE_S = 75.0




def close_connections_at_eof() -> None:
    """Workaround for hypercorn-trio 0.18 (pinned) keeping a connection its client closed open until the
    keep-alive timeout: once a connection's reader sees the end of the stream, its idle-timeout task is still
    sleeping in the connection's task group, so the socket stays in CLOSE-WAIT for ``keep_alive_timeout``
    (75 s here). A client that opens and closes connections (every short-lived CLI call, every load generator)
    made a coordinator leak one file descriptor per connection: 300 in 30 s under the receipt benchmark, the
    default limit of 1,024 within minutes. Hypercorn's asyncio server stops that task when it closes the
    connection; this stops it as soon as the reader is done (end of stream or a broken connection: no read
    timeout is configured), while request handlers still running finish in the task group.

    The reader also stops when the server closes the connection (``cut_stalled_sends_at_stop`` cancels it): at a
    stop, a keep-alive client's next request, read just as its previous answer ended, left the reader waiting for
    the connection to be recycled, which a stopping server never does, and every stop under load took the whole
    graceful timeout (a reviewer's reproduction). Idempotent."""
    if getattr(TCPServer, "_dsdn_closes_at_eof", False):
        return
    read_data = TCPServer._read_data

    async def read_then_stop_idle_timer(self: TCPServer) -> None:
        with trio.CancelScope() as self._dsdn_reader:  # type: ignore[attr-defined]
            await read_data(self)  # returns at the end of the stream or on a broken connection
        await self.idle_task.stop()

    TCPServer._read_data = read_then_stop_idle_timer  # type: ignore[method-assign]
    TCPServer._dsdn_closes_at_eof = True  # type: ignore[attr-defined]


def contain_connection_failures() -> None:
    """Workaround for hypercorn 0.18 (pinned) letting an error in one connection's protocol handling end the whole
    server: its HTTP/2 code looks up ``streams[stream_id]`` for a DATA frame on a stream it already answered and
    closed (a 401 or 413 sent before the body was read), and the KeyError went up through ``serve_listeners`` and
    stopped the process, from one unauthenticated connection of ~100 bytes (a reviewer's reproduction). An error
    escaping one connection now ends that connection only, with a warning. Idempotent."""
    if getattr(TCPServer, "_dsdn_contained", False):
        return
    run = TCPServer.run

    async def run_contained(self: TCPServer) -> None:
        peer = _peer(self)
        try:
            await run(self)
        except Exception as exc:  # (an ExceptionGroup of such errors too; cancellation is not an Exception)
            first = leaves(exc)[0] if isinstance(exc, BaseExceptionGroup) else exc
            log.warning("HTTP connection from %s dropped: the server failed on what it sent (%s: %s)",
                        peer, type(first).__name__, first)
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.stream.aclose()

    TCPServer.run = run_contained  # type: ignore[method-assign]
    TCPServer._dsdn_contained = True  # type: ignore[attr-defined]


def _peer(server: TCPServer) -> str:
    try:
        return str(server.stream.socket.getpeername())
    except Exception:  # an SSL stream, or a socket already gone
        return "a client"


GRACEFUL_TIMEOUT_S = 5.0  # how long a stop waits for requests under way


def cut_stalled_sends_at_stop() -> None:
    """Workaround for hypercorn-trio 0.18 (pinned) shielding every send to a client from cancellation: a client
    that never reads a large answer (a page of blobs of a blob store's log) kept its send, and so the process,
    from stopping, a second SIGTERM included (only kill -9 stopped a blob store with three such readers). A stop
    now gives sends ``GRACEFUL_TIMEOUT_S`` (a second signal: none), then closes those connections. Idempotent."""
    if getattr(TCPServer, "_dsdn_cuts_sends", False):
        return
    send = TCPServer.protocol_send

    async def protocol_send_until_cut(self: TCPServer, event: Any) -> None:
        if not isinstance(event, RawData):
            await send(self, event)
            if isinstance(event, Closed) and (reader := getattr(self, "_dsdn_reader", None)) is not None:
                reader.cancel()  # the connection is closed: nothing more is read (close_connections_at_eof)
            return
        sends, closed = _sends(), False
        async with self.send_lock:
            with trio.CancelScope(shield=True, deadline=_CUT_AT.get()) as scope:
                sends.add(scope)
                try:
                    await self.stream.send_all(event.data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    closed = True
                except trio.BusyResourceError:  # hypercorn closing the connection meanwhile (its send_eof, outside
                    closed = True  # the send lock): an ERROR traceback for each early answer to a client gone
                finally:
                    sends.discard(scope)
            if scope.cancelled_caught:
                log.warning("HTTP connection from %s closed: its client did not take the answer before the stop",
                            _peer(self))
                await trio.aclose_forcefully(self.stream)
                closed = True
            if closed:
                await self.protocol.handle(Closed())

    TCPServer.protocol_send = protocol_send_until_cut  # type: ignore[method-assign]
    TCPServer._dsdn_cuts_sends = True  # type: ignore[attr-defined]


_CUT_AT: RunVar[float] = RunVar("sends_cut_at", default=math.inf)
_SENDS: RunVar[set[trio.CancelScope]] = RunVar("sends")


def _sends() -> set[trio.CancelScope]:
    try:
        return _SENDS.get()
    except LookupError:
        sends: set[trio.CancelScope] = set()
        _SENDS.set(sends)
        return sends


def _cut_sends(grace_s: float) -> None:
    """A stop begins (``GRACEFUL_TIMEOUT_S``) or a second signal hurries it (0): sends to clients end by then."""
    cut_at = min(_CUT_AT.get(), trio.current_time() + grace_s)
    _CUT_AT.set(cut_at)
    for scope in _sends():
        scope.deadline = min(scope.deadline, cut_at)


def stopping() -> bool:
    """Whether this process's stop has begun (a stop signal, or the launcher gone): the cluster's other members stop
    at the same moment, and what fails meanwhile (their validators going away under our reads) is no news."""
    return _CUT_AT.get() < math.inf


def hypercorn_config(host: str, port: int) -> HyperConfig:
    """The server settings every coordinator (and the blob store, the devnet, the socket tests and the HTTP
    benchmark's coordinator) use; also applies ``close_connections_at_eof``, ``contain_connection_failures`` and
    ``cut_stalled_sends_at_stop``."""
    close_connections_at_eof()
    contain_connection_failures()
    cut_stalled_sends_at_stop()
    hcfg = HyperConfig()
    hcfg.bind = [host_port(host, port)]
    hcfg.accesslog = None
    hcfg.errorlog = logging.getLogger("hypercorn.error")
    hcfg.graceful_timeout = GRACEFUL_TIMEOUT_S
    # Longer than any client's idle-connection expiry (httpx 5 s, aiohttp 15 s, nginx 60 s): with hypercorn's
    # 5 s, a client reusing a connection idle for just under 5 s raced the server's close and got "server
    # disconnected without sending a response" (seen under load). Idle connections still close at once on
    # SIGTERM (api/asgi_fix.py), so shutdown does not wait for this.
    hcfg.keep_alive_timeout = KEEP_ALIVE_S
    return hcfg


#: the attributes every LogRecord has; any other attribute came from ``extra=`` and is a structured field
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                                     "taskName"}
#: what every JSON line carries (``coordinator``: set_log_context, null in processes that are no coordinator)
_context: dict[str, str | None] = {"coordinator": None}


def set_log_context(*, coordinator: str | None) -> None:
    """The coordinator id every JSON log line carries from now on (known once the config is read)."""
    _context["coordinator"] = coordinator


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
    ``coordinator``, ``message``, every field passed in ``extra=`` (values JSON cannot hold become strings),
    and ``exception`` (the formatted traceback, one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname,
                               "logger": record.name, "coordinator": _context["coordinator"],
                               "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def setup_logging(prog: str = "dsdn") -> None:
    """Configure the root logger from LOG_LEVEL and LOG_FORMAT; an invalid one stops the process with one line on
    stderr and exit code 2, as every invalid setting does."""
    try:
        level, fmt = log_level(os.environ), log_format(os.environ)
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO


class StoppedBySignal(Exception):
    """A second SIGTERM or SIGINT during a graceful stop: stop at once (``run_process`` exits 128 + signal)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}")


#: Set by ``dsdn cluster up`` in its children's environment, with their stdin a pipe it holds: when the launcher is
#: gone, however it went (kill -9, the OOM killer), the pipe closes and the child stops as on SIGTERM. Its children
#: run in sessions of their own (so Ctrl-C reaches the launcher only), and PR_SET_PDEATHSIG cannot help: trio starts
#: processes from a worker thread, and the signal fires when that thread ends.
STOP_AT_STDIN_EOF = "DSDN_STOP_AT_STDIN_EOF"


async def stop_on_signals(stop: trio.Event, hurry: trio.Event | None = None) -> None:
    """Set ``stop`` at the first SIGTERM, SIGINT or SIGHUP (the terminal or ssh session closed), or when the
    launcher that started this process is gone (``STOP_AT_STDIN_EOF``). At a second signal (Ctrl-C pressed again
    while a slow request or child holds the graceful stop up; not one within ``SAME_REQUEST_S``): set ``hurry``
    when given (the caller cuts its stop short), else raise ``StoppedBySignal`` (everything is cancelled; ``finally``
    blocks still close files).
    Listening until the end: once the receiver closed, a second Ctrl-C was Python's KeyboardInterrupt, a traceback
    in the middle of the stop (a cluster launcher left its DA services running, holding their ports)."""
    async with trio.open_nursery() as nursery:
        if os.environ.get(STOP_AT_STDIN_EOF) == "1":
            nursery.start_soon(_stop_at_stdin_eof, stop)
        await _stop_on_signals(stop, hurry)
        nursery.cancel_scope.cancel()


async def _stop_at_stdin_eof(stop: trio.Event) -> None:
    async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
        while await stdin.receive_some(4096):  # nothing is ever written: only its end matters
            pass
    if not stop.is_set():
        log.warning("the process that started this one is gone (its pipe closed): shutting down")
        stop.set()
        _cut_sends(GRACEFUL_TIMEOUT_S)


#: a signal within this long of the first is the same request, not a second one: ``kill -TERM -<group>`` reaches a
#: process both from the shell and from its parent passing it on (make, the cluster launcher), and that second copy
#: cut the graceful stop short (no final snapshot, the launcher killing every member: a reviewer's run)
SAME_REQUEST_S = 0.25


async def _stop_on_signals(stop: trio.Event, hurry: trio.Event | None) -> None:
    wanted = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup (SIG_IGN): the user asked to survive it
        wanted.append(signal.SIGHUP)
    first_at = 0.0
    with trio.open_signal_receiver(*wanted) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stop.is_set():
                log.info("received %s, shutting down", name)
                stop.set()
                first_at = trio.current_time()
                _cut_sends(GRACEFUL_TIMEOUT_S)
            elif trio.current_time() - first_at < SAME_REQUEST_S:
                log.info("received %s again at once: the same request (passed on by a parent), still stopping "
                         "gracefully", name)
            elif hurry is not None:
                log.warning("received %s again: stopping at once", name)
                _cut_sends(0.0)
                hurry.set()
            else:
                _cut_sends(0.0)
                raise StoppedBySignal(signum)


async def serve_until_signalled(serve: Callable[..., Awaitable[Any]], what: str) -> None:
    """``nursery.start(serve, shutdown_trigger=...)``; SIGTERM/SIGINT trigger its graceful stop."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signals, stop)  # listens until the end (a second signal: StoppedBySignal)
        async with trio.open_nursery() as serving:
            await serving.start(partial(serve, shutdown_trigger=stop.wait))
            mark_started()
        nursery.cancel_scope.cancel()
    logging.getLogger(f"dsdn.{what}").info("stopped cleanly")


_held_locks: list[int] = []  # descriptors of the data locks this process holds (for its whole life)
_started = False  # the process is serving: a failure now stopped it, it did not keep it from starting


def mark_started() -> None:
    """Say the process is up: ``run_process`` then reports a failure as "stopped", not "cannot start" (a DA
    service of the local cluster dying an hour in was reported as "cannot start")."""
    global _started
    _started = True


def lock_data(prog: str, path: Path) -> None:
    """Take the exclusive lock ``path`` (created) for this process's life, or exit 1 with one line: two processes on
    one data folder (a second ``cluster up`` on the default folder, or one beside orphans) corrupted each other's
    state (two devnets on one chain file: the second stalled for good on its first block)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # (a new one was 755: every local user read it)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # (a traceback before: a file in the way, no permission)
        print(f"{prog}: cannot start: cannot use the data folder {path.parent}: {exc.strerror or exc}",
              file=sys.stderr)
        sys.exit(1)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        print(f"{prog}: cannot start: another process uses {path.parent} (it holds {path.name}); stop it first",
              file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # a file system without locks (ENOLCK): nothing to hold, say so and go on
        os.close(fd)
        log.warning("cannot lock %s (%s): nothing keeps a second process off this data folder", path, exc)
        return
    _held_locks.append(fd)


def bind_error(exc: BaseException, what: str, host: str, port: int, variable: str) -> OSError:
    """The error of a listener that could not bind, naming the address and the setting (it said only "[Errno 98]
    Address already in use", the same for every port)."""
    errno, reason = getattr(exc, "errno", None), getattr(exc, "strerror", None) or exc
    return OSError(errno, f"cannot listen on the {what} port {host}:{port} ({variable}): {reason}")


def leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions a (nested) exception group carries, without the groups: what to tell the user."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def run_process(prog: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """``trio.run(fn, *args)``; exit 2 for a corrupt key file or a setting found wrong at start, 1 when it
    cannot start (port taken, storage)."""
    try:
        trio.run(fn, *args)
    except* StoppedBySignal as group:
        first = leaves(group)[0]
        print(f"{prog}: {first}", file=sys.stderr)
        sys.exit(128 + first.signum)  # type: ignore[attr-defined]
    except* KeyboardInterrupt:  # Ctrl-C before the signal handlers are in place (a screen of traceback)
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except* (KeyFileError, ConfigError) as group:
        for exc in leaves(group):
            kind = "configuration error: " if isinstance(exc, ConfigError) else ""
            print(f"{prog}: {kind}{exc}", file=sys.stderr)
        sys.exit(2)
    except* (OSError, sqlite3.Error, RuntimeError) as group:
        for exc in leaves(group):
            print(f"{prog}: {'stopped' if _started else 'cannot start'}: {exc}", file=sys.stderr)
        sys.exit(1)
