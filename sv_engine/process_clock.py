"""How long this process has been running, for reports that start a cold command's clock at the process's
start (interpreter start-up and imports included), not at the first line of our code."""

from __future__ import annotations

import os
import time
from pathlib import Path


def seconds_since_process_start() -> float | None:
    """Seconds since the kernel started this process (Linux ``/proc``, 10 ms ticks); None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text()
        # Fields after the command name (in parentheses, may hold spaces) start at field 3; starttime is field 22.
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None
