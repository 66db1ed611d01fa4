"""Fixtures of the console's browser tests: one Chromium per session, a fresh server per module.

The console only talks to the REST API, whose behaviour on SQLite and PostgreSQL the API suite
already checks; so these tests run once, against a server of their own on SQLite (a clean
database also keeps the screenshots free of other tests' channels).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.console.browser import CHROMIUM, CHROMIUM_ARGS, IN_CI, LAPTOP, missing
from tests.console.vendors import Fakes
from tests.fakes.receiver import Receiver
from tests.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Overrides the suite's per-backend server: SQLite only, empty, for this module."""
    process = ServerProcess(tmp_path_factory.mktemp("msgpush-console"))
    process.start()
    yield process
    process.stop()


# Module scope, not session: Playwright's sync API keeps an event loop running in this thread
# while it is open, which would break every async test collected after the console's.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = missing()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh English page (own sessionStorage and localStorage) on a laptop-sized window."""
    context = browser.new_context(viewport=LAPTOP, locale="en-US")
    context.set_default_timeout(10_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"


@pytest.fixture(scope="module")
def fakes(receiver: Receiver) -> Iterator[Fakes]:
    holder = Fakes(receiver)
    yield holder
    holder.stop()
