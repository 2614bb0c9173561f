"""The processor's hard limit: one message may use ``processing.max_cpu_seconds`` of CPU.

:mod:`coc_mail.budget` refuses the shapes known to be slow before any parser runs; this is
the limit nothing can get around. A thread of the processing worker reads the processor
thread's own CPU clock; when the message in hand has used more than its budget, the
watchdog writes the message's queue id to a file beside the pid file (fsync'd) and ends the
worker process at once. Its transaction dies with it, so nothing of the message is applied;
the worker is started again without delay, and the processor's first act is to set that
message aside (shunted, the operators told) before it takes the others in their order.
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


class Watched(Protocol):
    """What the watchdog reads of the processor (see :class:`coc_mail.processor.Processor`)."""

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
