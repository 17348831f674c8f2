"""`tusserver --workers N`: N server processes on one port, each with its own event loop.

The master process binds, forks and watches; it serves no request itself.
- Each worker gets a listening socket of its own on the same port (SO_REUSEPORT): the
  kernel spreads new connections over them, where one shared socket would let the
  first worker to wake take most of them. The master keeps none of these open, so a
  dead worker's socket leaves the group and takes no more connections. The ops
  listener (ops_port) is one socket that every worker accepts on.
- Locks: through Redis when redis_url is set; else through files in `lock_dir`
  (locking/files.py), a private temporary directory unless one is configured.
- Metrics: prometheus_client's multiprocess mode, in a private temporary directory:
  /metrics, answered by any worker, adds up every worker's counters and histograms;
  `tusserver_active_uploads` is the sum over live workers, `tusserver_temp_bytes` the
  spool bytes of all of them.
- SIGTERM or SIGINT: passed to every worker, which drains as a single server does
  (shutdown_grace); the master exits once all have. A worker that dies otherwise is
  started again (at most once a second), unless it keeps ending within seconds of its
  start: then the master stops, as a single server that cannot start does.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace

from .config import Config
from .stores.spool import process_alive

log = logging.getLogger("tusserver")

RUNTIME_PREFIX = "tusserver-run-"  # + the master's pid: its locks and metrics, in the temp dir
RESPAWN_PAUSE = 1.0  # seconds between starts of one worker slot
QUICK_END = 10.0  # seconds: a worker that ends sooner after its start may not be able to start
QUICK_ENDS_TO_GIVE_UP = 3
PR_SET_PDEATHSIG = 1  # linux/prctl.h
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# serve_one(config, sock, ops_sock) runs one server on the given sockets until it stops.
ServeOne = Callable[[Config, socket.socket, "socket.socket | None"], int]


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class Master:
    def __init__(self, config: Config, serve_one: ServeOne) -> None:
        self.config = config
        self.serve_one = serve_one
        removed = remove_stale_runtime()
        if removed:
            log.info("removed %d runtime directories of masters that are gone", removed)
        self.runtime = tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-")
        self.metrics_dir = os.path.join(self.runtime, "metrics")
        os.mkdir(self.metrics_dir)
        self.lock_dir = config.lock_dir
        if self.lock_dir is None and not config.redis_url:
            self.lock_dir = os.path.join(self.runtime, "locks")
        self.worker_config = config
        self.port = config.port
        self.ops_sock: socket.socket | None = None
        self.slots: dict[int, int] = {}  # pid -> slot
        self.started: dict[int, float] = {}  # slot -> when it was last started
        self.quick_ends: dict[int, int] = {}  # slot -> ends in a row within QUICK_END of a start
        self.stopping = False

    def run(self) -> int:
        try:
            first = listening_socket(self.config.host, self.config.port, reuse_port=True)
            self.port = first.getsockname()[1]  # port 0: the one the kernel chose
            self.worker_config = replace(self.config, lock_dir=self.lock_dir, port=self.port)
            if self.config.ops_port is not None:
                self.ops_sock = listening_socket(
                    self.config.ops_host or self.config.host, self.config.ops_port, reuse_port=False
                )
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", self.config.host, self.config.port, exc.strerror)
            self._clean_up()
            return 1
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("%d workers on port %d", self.config.workers, self.port)
        try:
            for slot in range(self.config.workers):
                self._start(slot, first if slot == 0 else None)
            return self._watch()
        finally:
            self._clean_up()

    def _start(self, slot: int, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = listening_socket(self.config.host, self.port, reuse_port=True)
        self.started[slot] = time.monotonic()
        master = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _end_with(master)
                use_metrics_dir(self.metrics_dir)
                code = self.serve_one(self.worker_config, sock, self.ops_sock)
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        sock.close()  # the worker's alone: a dead worker's socket must leave the group
        self.slots[pid] = slot

    def _stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("stopping %d workers", len(self.slots))
        self.stopping = True
        for pid in list(self.slots):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _watch(self) -> int:
        failed = False
        while self.slots:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            slot = self.slots.pop(pid, None)
            if slot is None:
                continue
            _forget_metrics(self.metrics_dir, pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                failed = failed or code != 0
                continue
            lived = time.monotonic() - self.started[slot]
            self.quick_ends[slot] = self.quick_ends.get(slot, 0) + 1 if lived < QUICK_END else 0
            if self.quick_ends[slot] >= QUICK_ENDS_TO_GIVE_UP:
                # It cannot start (a store it cannot reach, a port it cannot use): as a single
                # server would, stop, rather than start it again for ever.
                log.error(
                    "worker %d ended %d times within %gs of its start; stopping", slot, QUICK_ENDS_TO_GIVE_UP, QUICK_END
                )
                self._stop(signal.SIGTERM, None)
                failed = True
                continue
            log.error("worker %d (pid %d) ended with %s; starting it again", slot, pid, _described(code))
            pause = RESPAWN_PAUSE - lived
            if pause > 0:
                time.sleep(pause)
            if not self.stopping:
                self._start(slot)
        log.info("tusserver stopped")
        return 1 if failed else 0

    def _clean_up(self) -> None:
        if self.ops_sock is not None:
            self.ops_sock.close()
        shutil.rmtree(self.runtime, ignore_errors=True)


def remove_stale_runtime() -> int:
    """Remove the runtime directories (locks, metrics) of masters that are gone: a master
    killed with SIGKILL cannot remove its own."""
    removed = 0
    for path in glob.glob(os.path.join(glob.escape(tempfile.gettempdir()), RUNTIME_PREFIX + "*")):
        pid = os.path.basename(path)[len(RUNTIME_PREFIX) :].split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)) and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def serve_workers(config: Config, serve_one: ServeOne) -> int:
    return Master(config, serve_one).run()


def use_metrics_dir(directory: str) -> None:
    """Switch prometheus_client to multiprocess mode for the metrics made from now on."""
    from prometheus_client import values

    os.environ[METRICS_ENV] = directory
    values.ValueClass = values.MultiProcessValue()


def multiprocess_metrics() -> str | None:
    """The directory of the workers' metrics when this process is one of them."""
    return os.environ.get(METRICS_ENV)


def _end_with(master: int) -> None:
    """Have this worker get SIGTERM (and drain) when the master dies, even by SIGKILL: no
    worker may be left holding the port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("workers cannot follow the master's death on this system (no prctl)")
    if os.getppid() != master:  # it died before prctl took effect
        os._exit(0)


def _forget_metrics(directory: str, pid: int) -> None:
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid, directory)
    except OSError:
        pass


def _described(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
