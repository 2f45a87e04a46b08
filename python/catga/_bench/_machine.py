"""Where a run happened: date, CPU, Python, catga's version and core (`catga bench --json`)."""

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["catga_version", "cpu_model", "machine_info"]


def machine_info() -> dict[str, Any]:
    """The facts a benchmark's numbers mean nothing without.

    >>> sorted(machine_info())
    ['catga', 'core', 'cpu', 'cpus', 'date', 'platform', 'python']
    """
    import catga

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "catga": catga_version(),
        "core": "pure-Python" if catga.PURE_PYTHON else "native",
    }


def catga_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import catga

    try:
        return version("catga")
    except PackageNotFoundError:  # a source tree that was never installed
        return str(catga.__version__)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "unknown"
