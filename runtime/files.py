"""Temp files that a killed process left behind, recognised by the pid in their name.

Every atomic write in p2p goes to a hidden temp file beside its target and is renamed over
it. ``kill -9`` between the two leaves the temp file; these helpers let the next writer of
the same target remove it, while a temp file of a process that is still running is kept.
Torch-free, so trainer/, export/ and runtime/ can all use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_stale_temps(folder: Path, pattern: str) -> list[Path]:
    """Delete the entries of ``folder`` whose whole name matches ``pattern`` (a regex with a
    group named ``pid``) when that process is gone; returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = re.fullmatch(pattern, e.name)
        if m and not pid_alive(int(m.group("pid"))):
            Path(e.path).unlink(missing_ok=True)
            removed.append(Path(e.path))
    return removed
