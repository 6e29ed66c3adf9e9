"""`crossval report --png`: PNG screenshots of report pages, taken with headless Chromium (Debian
package chromium), so CI can attach what a person would see."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from crossval.report.inputs import ReportError

# flags for a machine without a display or a network: no GPU, no sandbox (root in CI), and none of
# Chromium's background connections
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]  # fmt: skip


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def screenshots(root: Path, pages: list[str], width: int = 1280, height: int = 1800, timeout: float = 120) -> list[Path]:
    """root/screenshots/<page stem>.png for each page (relative to root)."""
    exe = chromium()
    if exe is None:
        raise ReportError("--png needs headless Chromium (Debian package chromium)")
    (root / "screenshots").mkdir(exist_ok=True)
    out = []
    for rel in pages:
        dest = root / "screenshots" / f"{Path(rel).stem}.png"
        with tempfile.TemporaryDirectory() as profile:
            try:
                subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={dest}",
                                (root / rel).resolve().as_uri()], capture_output=True, timeout=timeout, check=False)  # fmt: skip
            except subprocess.TimeoutExpired:
                raise ReportError(f"--png: Chromium did not finish {rel} within {timeout:.0f} s") from None
        if not dest.is_file() or dest.stat().st_size == 0:
            raise ReportError(f"--png: Chromium wrote no screenshot of {rel}")
        out.append(dest)
    return out
