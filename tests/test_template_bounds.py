"""The render limits as units: what the bounded sandbox refuses before it allocates, what it
still allows, the output cap, and the render workers' time budget and memory limit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from msgpush import template_worker
from msgpush.events.templates import undeclared_names
from msgpush.templating import (
    TemplateError,
    TemplateLimitError,
    compile_template,
    render_limited,
)
from msgpush.templating import _env as sandbox

BOMBS = [
    ("{{ 10**(10**7) }}", "power too large"),
    ("{{ (-7)**100000 }}", "power too large"),
    ("{{ 'x' * 10**8 }}", "repeat count too large"),
    ("{{ 10**8 * 'x' }}", "repeat count too large"),
    ("{{ [0] * 10**8 }}", "repeat count too large"),
    ("{% set s = 'x' * 10**6 %}{{ s + s }}", "this +"),
    ("{{ '%999999999d' % 1 }}", "% format width"),
    ("{{ '%*d' % (999999999, 1) }}", "* width"),
    ("{{ '{:999999999}'.format(1) }}", "format width"),
    ("{{ '{:{w}}'.format(1, w=999999999) }}", "nested {}"),
    ("{{ 'x'.center(999999999) }}", "center width"),
    ("{{ 'x'.zfill(999999999) }}", "zfill width"),
    ("{{ ('\t' * 1000).expandtabs(999999) }}", "expandtabs"),
    ("{{ ('x' * 1000).replace('x', 'y' * 10000) }}", "replace"),
    ("{{ 'x' | center(999999999) }}", "center width"),
    ("{{ 'a\nb' | indent(999999999) }}", "indent width"),
    ("{{ '%999999999s' | format(1) }}", "% format width"),
    ("{{ ('x' * 1000) | replace('x', 'y' * 10000) }}", "replace"),
    ("{{ [1] | batch(999999999, 0) | list }}", "batch size"),
    ("{% for a in range(10**4) %}{% for b in range(10**4) %}x{% endfor %}{% endfor %}", "64 KiB"),
]


@pytest.mark.parametrize(("source", "says"), BOMBS)
def test_a_bomb_is_refused_before_it_allocates(source: str, says: str) -> None:
    started = time.perf_counter()
    with pytest.raises(TemplateLimitError, match=says.replace("*", r"\*")):
        render_limited(source, {}, 64 * 1024)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(("source", "says"), BOMBS)
def test_saving_a_bomb_computes_nothing(source: str, says: str) -> None:
    """Jinja2 folds constant expressions when it compiles; an intercepted operator is not."""
    started = time.perf_counter()
    compile_template(source + " ")  # not the cached one
    undeclared_names(source)
    assert time.perf_counter() - started < 0.2


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("{{ 2**10 }} {{ 2**-1 }} {{ 1.5**2 }}", "1024 0.5 2.25"),
        ("{{ 'ab' * 3 }}{{ [1] * 2 }}{{ 'a' + 'b' }}{{ 3 + 4 }}", "ababab[1, 1]ab7"),
        ("{{ '%05d|%-4s|%.2f' % (42, 'x', 3.14159) }}", "00042|x   |3.14"),
        ("{{ '{:>6}|{:.1f}'.format('r', 2.25) }}", "     r|2.2"),
        ("{{ 'ok'.center(6, '*') }} {{ 'a,b'.replace(',', ', ') }}", "**ok** a, b"),
        ("{{ 'x' | center(5) }}|{{ 'a\nb' | indent(2) }}", "  x  |a\n  b"),
        ("{{ [1, 2, 3] | batch(2, 0) | list }}", "[[1, 2], [3, 0]]"),
        ("{% for i in range(3) %}{{ i }}{% endfor %}", "012"),
    ],
)
def test_ordinary_templates_still_work(source: str, shown: str) -> None:
    assert render_limited(source, {}, 64 * 1024) == shown


def test_the_output_stops_at_its_limit_and_other_errors_stay_ordinary() -> None:
    assert render_limited("{{ 'x' * 1000 }}", {}, 1000) == "x" * 1000
    with pytest.raises(TemplateLimitError, match="output over 1 KiB"):
        render_limited("{{ 'x' * 1000 }}{{ 'y' * 100 }}", {}, 1024)
    with pytest.raises(TemplateError) as info:
        render_limited("{{ nope.x }}", {}, 1024)
    assert not isinstance(info.value, TemplateLimitError)
    assert sandbox.intercepted_binops >= {"**", "*"}


LOOPS = "{% set s = 'ab' * 50000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"


async def test_an_overrun_kills_its_worker_and_the_loop_keeps_turning() -> None:
    pool = template_worker.RenderPool(size=1)
    try:
        assert await pool.render(["{{ n }}"], {"n": 1}, template_worker.PREVIEW) == ["1"]
        budget = template_worker.Budget(0.5, 1024)
        late: list[float] = []

        async def ticks() -> None:
            for _ in range(20):
                started = time.monotonic()
                await asyncio.sleep(0.02)
                late.append(time.monotonic() - started - 0.02)

        started = time.monotonic()
        [result], _ = await asyncio.gather(pool.render([LOOPS], {}, budget), ticks())
        assert isinstance(result, TemplateLimitError) and "time limit of 0.5 s" in str(result)
        assert time.monotonic() - started < 1.5
        assert max(late) < 0.1, late
        # a fresh worker takes the next render
        assert await pool.render(["{{ n }}"], {"n": 2}, template_worker.PREVIEW) == ["2"]
    finally:
        await pool.close()


async def test_an_overrun_at_ingest_is_remembered_for_a_while() -> None:
    pool = template_worker.RenderPool(size=1)
    budget = template_worker.Budget(0.3, 1024, remember_overruns=True)
    try:
        [first] = await pool.render([LOOPS], {}, budget)
        started = time.monotonic()
        [second] = await pool.render([LOOPS], {}, budget)
        assert time.monotonic() - started < 0.1
        assert "time limit" in str(first) and "skipped" in str(second)
        [other] = await pool.render(["fine"], {}, budget)
        assert other == "fine"
    finally:
        await pool.close()


async def test_memory_is_bounded_in_the_worker() -> None:
    doubling = (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}"
    )
    pool = template_worker.RenderPool(size=1)
    try:
        results = await pool.render([doubling, "after"], {}, template_worker.Budget(20, 1024))
        assert isinstance(results[0], TemplateLimitError), results
        assert "memory" in str(results[0])
        assert await pool.render(["{{ 1 + 1 }}"], {}, template_worker.PREVIEW) == ["2"]
    finally:
        await pool.close()


async def test_a_cancelled_render_leaves_no_worker_half_way() -> None:
    pool = template_worker.RenderPool(size=1)
    try:
        task = asyncio.ensure_future(pool.render([LOOPS], {}, template_worker.Budget(10, 1024)))
        await asyncio.sleep(0.8)  # started, and rendering
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await pool.render(["{{ 3 }}"], {}, template_worker.PREVIEW) == ["3"]
    finally:
        await pool.close()


async def test_the_round_trip_costs_a_fraction_of_a_millisecond() -> None:
    """The price of rendering a custom template outside the server's process, for a small
    event's context (README: Security)."""
    context: dict[str, Any] = {"data": {"task": "daily_sales", "error": "x" * 200}, "n": 1}
    pool = template_worker.RenderPool(size=1)
    try:
        await pool.render(["{{ n }}"], context, template_worker.INGEST)
        rounds = 300
        started = time.perf_counter()
        for _ in range(rounds):
            await pool.render(["{{ data.task }} failed"], context, template_worker.INGEST)
        per_render_ms = (time.perf_counter() - started) / rounds * 1000
        print(f"\nrender worker round trip: {per_render_ms:.3f} ms")
        assert per_render_ms < 5  # ~0.15 ms measured; generous on a shared machine
    finally:
        await pool.close()
