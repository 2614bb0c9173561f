"""The processor's hard limit: one message may use ``processing.max_cpu_seconds`` of CPU.

:mod:`coc_mail.mail.budget` refuses the shapes known to be slow before any parser runs; this is
the limit nothing can get around, in two layers:

* a thread of the processing worker reads the processor thread's own CPU clock; when the
  message in hand has used more than its budget, it writes the message's queue id to a file
  beside the pid file (fsync'd) and ends the worker process at once;
* a thread cannot run while one long call in C holds the interpreter (a regular expression
  over a huge text), so the processor also arms the kernel's profiling timer for each
  message (a few seconds more): when it fires, the kernel ends the process with SIGPROF,
  however busy, and the main process reads which message was in hand (the processor writes
  its id to a small file as it takes it) and records it the same way.

The transaction dies with the process, so nothing of the message is applied; the worker is
started again without delay, and the processor's first act is to set that message aside
(shunted, the operators told) before it takes the others in their order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

EXIT_OVER_BUDGET = 75  # the worker's exit status after the watchdog stopped a message
INTERVAL = 0.2  # seconds between readings of the processor's CPU clock
KERNEL_GRACE = 5.0  # the kernel's timer fires this much later than the watchdog thread
RECORD = 21  # bytes of the "message in hand" file: a right-aligned id and a newline


def files(pid_file: str) -> tuple[Path, Path]:
    """The file of messages over budget, and the file naming the message in hand."""
    pid = Path(pid_file)
    return pid.with_suffix(".over-budget"), pid.with_suffix(".in-hand")


def in_hand(fd: int, row_id: int) -> None:
    """Write which message the processor takes (0: none): one pwrite, no fsync (it only has
    to outlive the process, not the machine)."""
    os.pwrite(fd, f"{row_id:>{RECORD - 1}}\n".encode(), 0)


def killed_in_hand(pid_file: str) -> int:
    """After the kernel ended the processing worker: record the message it had in hand as
    over budget (returns its id, 0 when it had none)."""
    over, hand = files(pid_file)
    try:
        text = hand.read_text().strip()
    except FileNotFoundError:
        return 0
    row_id = int(text) if text.isdigit() else 0
    if row_id:
        record(over, row_id)
    return row_id


class Watched(Protocol):
    """What the watchdog reads of the processor (:class:`coc_mail.cases.processor.Processor`)."""

    current: int | None
    cpu_clock: int | None
    cpu_start: float

    @property
    def over_budget_file(self) -> Path: ...


def record(path: Path, row_id: int) -> None:
    """Append ``row_id`` to the file the next processor reads, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{row_id}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def watch(processor: Watched, limit: Callable[[], float], stopping: threading.Event) -> None:
    """Run until ``stopping``; end the process when one message goes over ``limit()``."""
    while not stopping.wait(INTERVAL):
        row, clock, start = processor.current, processor.cpu_clock, processor.cpu_start
        if row is None or clock is None:
            continue
        used, allowed = time.clock_gettime(clock) - start, limit()
        if used <= allowed or processor.current != row or processor.cpu_start != start:
            continue
        record(processor.over_budget_file, row)
        log.error("processor: inbound %d used %.1f s of CPU (limit %g s): it is set aside "
                  "and the worker restarts", row, used, allowed)
        logging.shutdown()
        os._exit(EXIT_OVER_BUDGET)


def start(processor: Watched, limit: Callable[[], float],
          stopping: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=watch, args=(processor, limit, stopping),
                              name="watchdog", daemon=True)
    thread.start()
    return thread
