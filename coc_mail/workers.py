"""Worker processes: processing, delivery, reminders and the web view, beside the SMTP intake.

``coc-mail serve`` keeps the SMTP listener (and its group-committing spool) in its own
process and starts ``server.workers`` worker processes, as Postfix's master starts smtpd,
cleanup and smtp apart: a flood of SMTP sessions and the CPU-heavy work behind it (parsing,
DKIM signing, relaying) then run on different cores instead of taking turns on one
interpreter lock. The processes share nothing but the database, and each has a wake-up pipe:

* the intake writes ``p`` to worker 0's pipe after each commit: worker 0 processes the
  incoming queue (one processor per database, in arrival order) and runs the reminders;
* whoever queues copies writes ``d`` to every worker's pipe: the other workers deliver, each
  claiming its own copies with a lease (worker 0 delivers too when it is the only one).

Workers are forked, not executed: before it opens a database or starts a thread, the main
process forks a *forker* that holds every module a worker needs, already imported. Asked for
worker N, the forker forks, the child forks worker N and exits at once, and worker N, an
orphan, becomes the main process's own child (the main process is a "child subreaper",
Linux's ``PR_SET_CHILD_SUBREAPER``): it waits for it and reads its exit status as if it had
started it itself. The forker tells the main process the worker's pid only once the child
in between has exited, so the main process never looks for a child it does not have yet. A
forked worker closes every file descriptor a program would not have been given. A worker
then starts without importing anything (about a second of CPU each on a small machine) and
shares the main process's pages of code. Where that cannot be
(not Linux, a thread already running, the forker gone), a worker is started as a new
program, ``coc-mail worker N``, as before.

A worker whose main process dies (even by SIGKILL) sees its lifeline pipe close, finishes and
records the copies in hand for at most two seconds and exits; what is left is redone by the
next start, as after any crash. The main process
restarts a worker that dies, and stops them all (SIGTERM, then waits) when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import setproctitle

from coc_mail import config as config_mod
from coc_mail.app import build
from coc_mail.cases.processor import Processor
from coc_mail.cases.reminders import Scheduler
from coc_mail.cases.watchdog import EXIT_OVER_BUDGET, killed_in_hand
from coc_mail.cases.watchdog import start as start_watchdog
from coc_mail.config import Settings
from coc_mail.delivery.worker import Deliverer, make_transport
from coc_mail.errors import CocMailError

log = logging.getLogger(__name__)

PROCESS = b"p"
DELIVER = b"d"
RESTART_DELAY = 1.0
ORPHAN_GRACE = 2.0  # seconds a worker whose main process died may take to stop
# Under a flood the CPU goes first to the SMTP listener (nothing refused, nothing slow to
# answer), then to the processor (the one serial stage), then to delivery and the web view.
# Delivery comes well after the processor: it feeds on the processor's output and catches up
# on both cores once the processor is done, while a processor sharing a core with a delivery
# worker at nice 6 got 70 % of it and the cores went idle waiting (5.7-6.8 % idle against
# 3.0-3.9 % at nice 10, delivered reports/s 1.01-1.25 x in three alternated floods).
PROCESSOR_NICE = 2
DELIVERY_NICE = 10
# Pages for members reading come after the mail: a flood is accepted, processed and
# delivered first (pages then take longer: p99 0.56 s against 0.30 s with delivery and the
# web view at nice 6 and 10, 50 members reading during a flood of 1,500 reports;
# docs/web-load.md). The web view stays four steps after delivery. These add to the nice
# value the daemon was started with: from 5 on, delivery and the web view meet at 19.
WEB_NICE = 14


PR_SET_CHILD_SUBREAPER = 36  # prctl(2): orphaned descendants become our children
# Seconds the main process waits for the forker's answer. It waits on its event loop (a
# fork takes milliseconds), so a forker that is stopped or starved holds the intake this long,
# once: then workers are started as programs.
FORK_TIMEOUT = 2.0


FORKER_TITLE = "coc-mail: forker"


def title(index: int, web: bool) -> str:
    """What ``ps`` shows for worker ``index`` (bench/procs.py reads it)."""
    job = "web view" if web else "processing" if index == 0 else "delivery"
    return f"coc-mail: worker {index} ({job})"


def subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class Forked:
    """A worker the forker forked: the main process's child (it is its subreaper), waited for
    with ``os.waitpid``; the part of :class:`subprocess.Popen` that :class:`Pool` uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not our child (the forker answers once it is)
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:  # gone, reaped by another: its status unknown
                    self.returncode = 255
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # a zombie not yet waited for still takes signals harmlessly
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _children() -> list[int]:
    """This process's children (Linux: every thread's ``children`` file in /proc)."""
    found: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _close_all_but(keep: set[int]) -> None:
    """Close every file descriptor from 3 on that is not in ``keep``."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 4096)


def _log_fds() -> set[int]:
    """The file descriptors of the logging handlers' streams (the daemon's log file)."""
    fds: set[int] = set()
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            stream = getattr(handler, "stream", None)
            with contextlib.suppress(AttributeError, OSError, ValueError):
                fds.add(stream.fileno())  # type: ignore[union-attr]
    return fds


def poke(fds: list[int], what: bytes) -> None:
    """Write a wake-up byte to each pipe; a full pipe already has a wake-up waiting."""
    for fd in fds:
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(fd, what)


class Pool:
    """The main process's side: start, watch, signal and stop the worker processes."""

    def __init__(self, config_path: str | None, count: int, keep_fds: list[int],
                 pid_file: str = "var/coc-mail.pid", web_fd: int | None = None) -> None:
        self.config_path = config_path
        self.pid_file = pid_file
        self.count = count
        self.keep_fds = keep_fds  # e.g. the SQLite lock file: held until the last worker exits
        self.web_fd = web_fd  # the web view's listening socket: one more process serves it
        total = count + (web_fd is not None)
        pipes = [os.pipe() for _ in range(total)]
        for _, w in pipes:
            os.set_blocking(w, False)
        self.wake_r = [r for r, _ in pipes]
        self.wake_w = [w for _, w in pipes]
        self.lifeline_r, self.lifeline_w = os.pipe()  # never written: EOF means we are gone
        self.procs: list[subprocess.Popen[bytes] | Forked | None] = [None] * total
        self.stopping = False
        self.restarts = 0
        self.forker: Forked | None = None  # the forker, while it serves
        self.ask_w = self.answer_r = -1

    def fork_server(self) -> None:
        """Fork the forker (see the module's docstring). Call it before any database is opened
        or thread started, with every module a worker needs imported; on failure the workers
        are started as programs."""
        if threading.active_count() > 1 or not subreaper():
            log.debug("workers are started as programs (no forker)")
            return
        import uvloop  # noqa: F401 - imported once here, for every worker

        ask_r, ask_w = os.pipe()
        answer_r, answer_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the forker: it never returns
            os.close(ask_w)
            os.close(answer_r)
            os.close(self.lifeline_w)
            code = 1
            try:
                self._serve_forks(ask_r, answer_w)
                code = 0
            finally:
                os._exit(code)
        os.close(ask_r)
        os.close(answer_w)
        self.forker, self.ask_w, self.answer_r = Forked(pid), ask_w, answer_r

    def _serve_forks(self, ask_r: int, answer_w: int) -> None:
        """The forker's loop: fork the worker asked for until the main process is gone."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)  # the main process stops us by going away
        setproctitle.setproctitle(FORKER_TITLE)
        _close_all_but({0, 1, 2, ask_r, answer_w, self.lifeline_r, *self.wake_r, *self.wake_w,
                        *self.keep_fds, *_log_fds(),
                        *([] if self.web_fd is None else [self.web_fd])})
        while True:
            ready, _, _ = select.select([ask_r, self.lifeline_r], [], [])
            if self.lifeline_r in ready or not (asked := os.read(ask_r, 1)):
                return
            index = asked[0]
            pid_r, pid_w = os.pipe()
            middle = os.fork()
            if middle == 0:
                worker = os.fork()
                if worker == 0:
                    os.close(pid_w)  # (the forker reads the pid to its end)
                    os._exit(self._forked_worker(index))
                os.write(pid_w, f"{worker}\n".encode())
                os._exit(0)
            os.close(pid_w)
            with os.fdopen(pid_r, "rb") as answer:
                worker_pid = answer.read()
            os.waitpid(middle, 0)
            # Answered only now that the middle is gone: the worker is the main process's
            # child from here on, and waitpid() there cannot miss it (ECHILD read as "exited"
            # had started a second worker N beside the first).
            os.write(answer_w, worker_pid or b"-\n")

    def _forked_worker(self, index: int) -> int:
        """Worker ``index`` in its forked process: as ``coc-mail worker`` would run it."""
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        web = index == self.count and self.web_fd is not None
        setproctitle.setproctitle(title(index, web))  # a program's shows its arguments
        # Only what a worker started as a program is given (Popen's pass_fds), and the log's
        # streams: not the forker's pipes, the other workers' wake-up pipes, the web view's
        # socket (but in its process) or whatever the daemon's invoker left open.
        keep = {0, 1, 2, self.wake_r[index], self.lifeline_r, *self.wake_w[:self.count],
                *self.keep_fds, *_log_fds()}
        if web and self.web_fd is not None:
            keep.add(self.web_fd)
        _close_all_but(keep)
        code = 1
        try:
            try:
                run_worker(config_mod.load(self.config_path), self.config_path, index,
                           self.wake_r[index], self.lifeline_r, self.wake_w[:self.count],
                           self.web_fd if web else None)
                code = 0
            except CocMailError as exc:
                print(f"coc-mail: {exc}", file=sys.stderr)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - shown as the program would show it
                import traceback

                traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
        return code

    def _fork(self, index: int) -> Forked | None:
        """Worker ``index`` from the forker, or None if it does not answer."""
        if self.forker is None:
            return None
        try:
            os.write(self.ask_w, bytes([index]))
            ready, _, _ = select.select([self.answer_r], [], [], FORK_TIMEOUT)
            line = b""
            while ready and not line.endswith(b"\n"):
                part = os.read(self.answer_r, 32)
                if not part:
                    break
                line += part
            return Forked(int(line))
        except (OSError, ValueError):
            log.error("the forker did not answer; workers are started as programs from now on")
            self._end_forker(wait=0.0)
            self._end_strays()
            return None

    def _end_strays(self) -> None:
        """After the forker failed: kill and reap the children this process does not track. A
        worker the forker forked but did not answer for in time (or the child between, which
        may still fork it) would otherwise run beside the one started as a program in its
        place: two worker N, perhaps two processors on one database."""
        tracked = {p.pid for p in self.procs if p is not None}
        for _ in range(10):  # the child between dies, then its worker becomes ours: again
            strays = [pid for pid in _children() if pid not in tracked]
            if not strays:
                return
            log.warning("ending %d process(es) the forker left", len(strays))
            for pid in strays:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in strays:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    def _end_forker(self, wait: float = 5.0) -> None:
        """Close the forker's pipes (it exits on seeing them closed), wait ``wait`` seconds for
        it, then kill it."""
        if self.forker is None:
            return
        forker, self.forker = self.forker, None
        for fd in (self.ask_w, self.answer_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            forker.wait(wait)
            return
        forker.kill()
        forker.wait()

    def _spawn(self, index: int) -> subprocess.Popen[bytes] | Forked:
        if (forked := self._fork(index)) is not None:
            return forked
        config = ["--config", self.config_path] if self.config_path else []
        args = [
            sys.executable, "-m", "coc_mail", *config, "worker", str(index),
            "--wake-fd", str(self.wake_r[index]),
            "--lifeline-fd", str(self.lifeline_r),
            "--peer-fds", ",".join(map(str, self.wake_w[:self.count])),
        ]
        fds = [self.wake_r[index], self.lifeline_r, *self.wake_w, *self.keep_fds]
        if index == self.count and self.web_fd is not None:
            args += ["--web-fd", str(self.web_fd)]
            fds.append(self.web_fd)
        return subprocess.Popen(args, pass_fds=fds)

    def start(self) -> None:
        for i in range(len(self.procs)):
            self.procs[i] = self._spawn(i)

    async def watch(self) -> None:
        """Restart a worker that exits while the daemon runs (it crashed or was killed)."""
        while not self.stopping:
            await asyncio.sleep(0.5)
            if self.forker is not None and self.forker.poll() is not None:
                log.error("the forker exited; workers are started as programs from now on")
                self._end_forker(wait=0.0)  # (reaped already: only its pipes are closed)
            for i, proc in enumerate(self.procs):
                if proc is None or proc.poll() is None or self.stopping:
                    continue
                self.restarts += 1
                if i == 0 and proc.returncode == -signal.SIGPROF:  # the kernel's timer
                    row = killed_in_hand(self.pid_file)
                    log.warning("worker 0 was stopped by its CPU timer (inbound %d in hand); "
                                "restarting it", row)
                elif proc.returncode == EXIT_OVER_BUDGET:  # a message stopped: go on at once
                    log.warning("worker %d stopped a message over its processing budget; "
                                "restarting it", i)
                else:
                    log.error("worker %d exited with status %s; restarting it", i,
                              proc.returncode)
                    await asyncio.sleep(RESTART_DELAY)
                if not self.stopping:
                    self.procs[i] = self._spawn(i)

    def process(self) -> None:
        poke(self.wake_w[:1], PROCESS)

    def deliver(self) -> None:
        poke(self.wake_w[:self.count], DELIVER)

    def flush(self) -> None:
        """``coc-mail queue --flush`` (SIGUSR1): retried messages and copies, now."""
        self.process()
        self.deliver()

    def signal(self, sig: signal.Signals) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM every worker and wait for them (each finishes what it has in hand)."""
        self.stopping = True
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("stopping: a worker did not finish in time; killed")
                proc.kill()
                proc.wait()
        os.close(self.lifeline_w)
        self._end_forker()


class Worker:
    """One worker process: processing and reminders in worker 0, delivery in the others (in
    worker 0 too when there is no other)."""

    def __init__(
        self, settings: Settings, config_path: str | None, index: int,
        wake_fd: int, lifeline_fd: int, peer_fds: list[int],
    ) -> None:
        self.app = build(settings, migrate=False)
        self.config_path = config_path
        self.index = index
        self.wake_fd, self.lifeline_fd, self.peer_fds = wake_fd, lifeline_fd, peer_fds
        self.stopped = asyncio.Event()

    def _queued(self) -> None:
        poke(self.peer_fds, DELIVER)

    def reload(self) -> None:
        try:
            self.app.settings = config_mod.load(self.config_path)
        except CocMailError:
            return  # the main process logs why and keeps running on the old configuration

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        count = len(self.peer_fds)
        delivering = self.index > 0 or count == 1
        # One daemon on SQLite: delivery workers split the queue by body (or copy) id
        # instead of leasing copies.
        single = self.app.settings.database_url.startswith("sqlite")
        partition = (max(0, self.index - 1), max(1, count - 1)) if single else None
        deliverer = Deliverer(self.app, make_transport(self.app), partition)
        os.nice(DELIVERY_NICE if self.index > 0 else PROCESSOR_NICE)
        processor: Processor | None = None
        threads: list[threading.Thread] = []
        scheduler: Scheduler | None = None
        if self.index == 0:
            processor = Processor(self.app, on_queued=self._queued)
            scheduler = Scheduler(self.app, self._queued)
            threads = [
                threading.Thread(target=processor.run, name="processor", daemon=True),
                threading.Thread(target=scheduler.run, name="reminders", daemon=True),
            ]
            for t in threads:
                t.start()
            start_watchdog(processor, lambda: self.app.settings.processing.max_cpu_seconds,
                           processor.stopping)
            # The kernel's timer counts the whole process: only where it does nothing else.
            processor.kernel_timer = count > 1

        def woken() -> None:
            try:
                data = os.read(self.wake_fd, 4096)
            except BlockingIOError:
                return
            if DELIVER in data:
                deliverer.wake.set()
            if PROCESS in data and processor is not None:
                processor.wake.set()

        def orphaned() -> None:
            if os.read(self.lifeline_fd, 1):
                return
            # Finish what is in hand and record it (fewer copies sent twice after the
            # restart), but never for longer than ORPHAN_GRACE: past it, exit as after a
            # crash (leases run out, the next start redoes the rest).
            log.error("worker %d: the daemon's main process is gone; stopping", self.index)
            loop.remove_reader(self.lifeline_fd)
            loop.call_later(ORPHAN_GRACE, os._exit, 1)
            self.stopped.set()

        os.set_blocking(self.wake_fd, False)
        loop.add_reader(self.wake_fd, woken)
        loop.add_reader(self.lifeline_fd, orphaned)
        loop.add_signal_handler(signal.SIGTERM, self.stopped.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, deliverer.wake.set)
        delivery = asyncio.create_task(
            deliverer.run() if delivering else asyncio.sleep(0), name="delivery"
        )
        await self.stopped.wait()
        if processor is not None and scheduler is not None:
            scheduler.stopping.set()
            processor.stopping.set()
            processor.wake.set()
            await asyncio.to_thread(threads[0].join, 30)
        deliverer.stop()  # copies being sent are finished and recorded, up to 30 s
        try:
            await asyncio.wait_for(delivery, 30)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("stopping: copies still in flight are left to the next start")
        log.info(
            "worker %d stopped: %d processed, %d copies delivered, %d deferrals",
            self.index, processor.processed if processor else 0,
            deliverer.delivered, deliverer.deferred,
        )


def run_worker(
    settings: Settings, config_path: str | None, index: int,
    wake_fd: int, lifeline_fd: int, peer_fds: list[int], web_fd: int | None = None,
) -> None:
    """Entry point of ``coc-mail worker`` (started by ``serve``, not by hand)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the main process, which stops us
    if web_fd is not None:  # the web view's process
        from coc_mail.web.server import serve

        os.nice(WEB_NICE)

        run_loop(lambda: serve(settings, config_path, web_fd, lifeline_fd,
                               lambda: poke(peer_fds, DELIVER)))
        return
    worker = Worker(settings, config_path, index, wake_fd, lifeline_fd, peer_fds)
    run_loop(worker.run)


def run_loop(main: Callable[[], object]) -> None:
    """Run ``main`` on uvloop when it is installed (faster sockets), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        asyncio.run(main())  # type: ignore[arg-type]
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())  # type: ignore[arg-type]
