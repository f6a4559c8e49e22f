"""Machine facts printed next to every benchmark's figures."""

from __future__ import annotations

import os
import platform
import sys


def machine() -> dict[str, object]:
    facts: dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/meminfo") as handle:
            facts["mem_total_gib"] = round(int(handle.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return facts
