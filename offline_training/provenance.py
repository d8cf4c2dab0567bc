"""Which code made a result: the git commit of the working tree (training runs, exports, maintenance)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """Commit of the working tree the package runs from, ``+dirty`` with uncommitted changes ('unknown'
    outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).parent).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
