"""Headless Chromium for the ``browser`` tests: the system's Debian ``chromium`` driven by Playwright.

Playwright's own browser download is not reachable here, so the browser is launched from
``executable_path`` (``$TBX_CHROMIUM`` or ``/usr/bin/chromium``).  Without it the tests skip with
the reason, except under CI (``CI=true``), where a missing browser fails them: ``.ci/run`` installs
the Debian package first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("TBX_CHROMIUM", "/usr/bin/chromium"))
LOCAL_SCHEMES = ("file:", "data:", "blob:")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


def launch_chromium() -> Iterator[Any]:
    """Yield a Playwright ``Browser`` (module fixtures wrap this generator)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium, or set TBX_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watch:
    """What a page did: console errors, uncaught exceptions, and every request it made."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def external(self) -> list[str]:
        return list(dict.fromkeys(u for u in self.requests if not u.startswith(LOCAL_SCHEMES)))


def watch(context: Any, page: Any) -> Watch:
    """Record ``page``'s console errors / page errors / requests; any request that is not to a local
    file (file:, data:, blob:) is aborted at the context's router and recorded."""
    w = Watch()
    page.on(
        "console", lambda m: w.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: w.errors.append(f"pageerror: {e}"))
    page.on("request", lambda r: w.requests.append(r.url))

    def route(r: Any) -> None:
        if r.request.url.startswith(LOCAL_SCHEMES):
            r.continue_()
        else:
            w.requests.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return w
