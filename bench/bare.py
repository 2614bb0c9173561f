"""A bare aiosmtpd server that answers 250 and keeps nothing: the baseline of the benchmark.

    python -m bench.bare PORT [MAX_MESSAGE_BYTES]
"""

from __future__ import annotations

import sys
import time
from typing import Any

from aiosmtpd.controller import Controller


class Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def main() -> None:
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 33_554_432  # aiosmtpd's default
    controller = Controller(Discard(), hostname="127.0.0.1", port=int(sys.argv[1]),
                            data_size_limit=limit)
    controller.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
