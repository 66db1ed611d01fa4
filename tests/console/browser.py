"""Headless Chromium for the console tests: where it is, how it is started, screenshots."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP = {"width": 1366, "height": 860}
NARROW = {"width": 390, "height": 844}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: apt-get install -y chromium fonts-wqy-zenhei"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed: pip install 'playwright>=1.40'"
    return None


def shoot(page: Any, name: str, **options: Any) -> Path:
    """Save a screenshot as docs/screenshots/<name>.png (for docs/console.md)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    options.setdefault("style", "#toasts { display: none !important; }")
    page.screenshot(path=str(path), animations="disabled", caret="hide", **options)
    return path
