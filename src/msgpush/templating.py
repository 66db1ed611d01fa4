"""Sandboxed Jinja2: the one environment every template renders in, and the limits it keeps.

Jinja2's sandbox stops a template from reaching Python's internals; it does not stop one from
asking for a lot of work. msgpush bounds a render in three layers:

1. **Refused before they allocate** (here, in :class:`BoundedSandbox`): the operations whose
   cost is out of proportion to their text. ``**`` on integers whose result would exceed
   :data:`MAX_POWER_BITS` (``10**(10**7)`` holds the GIL for ~20 s in one C call: no timer
   can interrupt it, so it must never start); ``*`` and ``+`` building a string or list over
   :data:`MAX_BUILT_ITEMS` (``'x' * 10**8``); widths and repeat counts in ``%``, ``.format``,
   ``center``/``ljust``/``rjust``/``zfill``, ``expandtabs``, ``replace`` and the filters
   ``center``, ``indent``, ``format``, ``replace`` and ``batch``. ``range()`` keeps the
   sandbox's own cap (100,000 items). Intercepted operators are also never folded at compile
   time, so saving a template never computes them either.
2. **Output**: :func:`render_limited` streams the output (``Template.generate``) and stops
   past a limit (64 KiB for a message part, 1 MiB for a webhook body) instead of building it.
3. **Time and memory**: :mod:`msgpush.template_worker` renders user-written templates in a
   separate process with a time budget (1 s for a preview or a save check, 2 s at ingest or
   send) and an address-space limit; an overrun kills that process, not the server's event
   loop. Nested loops (``{% for a in s %}{% for b in s %}``) are bounded only there.

Over any limit is a :class:`TemplateLimitError`, whose message says which limit.
"""

from __future__ import annotations

import functools
import math
import operator
import re
import string
from collections.abc import Callable
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

MESSAGE_OUTPUT_CHARS = 64 * 1024  # a title or content part (a message's content takes 65,536)
BODY_OUTPUT_CHARS = 1024 * 1024  # a webhook body (it may carry the event's data, up to 256 KiB)
MAX_POWER_BITS = 4096  # 2**4096 has 1,234 digits: far past any number a message shows
MAX_BUILT_ITEMS = 1024 * 1024  # characters or items of a string or list built by * + and such
MAX_WIDTH = 10_000  # a field width or padding in a format, center, indent, …


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered; the message says where and why."""


class TemplateLimitError(TemplateError):
    """A template that asks for more than a render may take (time, output, memory or an
    operation too large): refused at save and preview, never retried at send."""


def _kib(chars: int) -> str:
    return f"{chars // 1024:,} KiB"


def _too_big(what: str, size: int, limit: int) -> TemplateLimitError:
    return TemplateLimitError(f"{what} would make {size:,} items; a template may build {limit:,}")


def _sized(value: Any) -> bool:
    return isinstance(value, str | bytes | list | tuple)


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        bits = round(math.log2(abs(base)) * exponent) if abs(base) > 1 else 0
        if bits > MAX_POWER_BITS:
            raise TemplateLimitError(
                f"power too large: {base} ** {exponent} has about {bits:,} bits; "
                f"a template may compute {MAX_POWER_BITS:,}"
            )


def _check_repeat(left: Any, right: Any) -> None:
    for seq, count in ((left, right), (right, left)):
        if _sized(seq) and isinstance(count, int) and len(seq) * count > MAX_BUILT_ITEMS:
            raise _too_big("repeat count too large: this *", len(seq) * count, MAX_BUILT_ITEMS)


def _check_join(left: Any, right: Any) -> None:
    if _sized(left) and _sized(right) and len(left) + len(right) > MAX_BUILT_ITEMS:
        raise _too_big("this +", len(left) + len(right), MAX_BUILT_ITEMS)


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and width > MAX_WIDTH:
        raise TemplateLimitError(
            f"{what} width {width:,} too large; a template may use {MAX_WIDTH:,}"
        )


# a printf conversion: flags, width (digits or *), precision (digits or *)
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_printf(fmt: str) -> None:
    for match in _PRINTF.finditer(fmt):
        for size in match.groups():
            if size == "*":
                raise TemplateLimitError("a * width in a % format is not allowed in templates")
            if size is not None:
                _check_width(int(size), "% format")


def _check_format_spec(fmt: str) -> None:
    for _text, _name, spec, _conversion in string.Formatter().parse(fmt):
        if spec and "{" in spec:
            raise TemplateLimitError("a nested {} width in a format is not allowed in templates")
        for size in _DIGITS.findall(spec or ""):
            _check_width(int(size), "format")


def _check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Widths and growth of the ``str`` methods that can build far more than they are given."""
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    given = list(args) + list(kwargs.values())
    if name in ("center", "ljust", "rjust", "zfill") and given:
        _check_width(given[0], name)
    elif name == "expandtabs":
        size = given[0] if given else 8
        if isinstance(size, int):
            grown = len(owner) + owner.count("\t") * size
            if grown > MAX_BUILT_ITEMS:
                raise _too_big("expandtabs", grown, MAX_BUILT_ITEMS)
    elif name == "replace" and len(given) >= 2:
        _check_replace(owner, given[0], given[1])


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        hits = text.count(old) if old else len(text) + 1
        grown = len(text) + hits * (len(new) - len(old))
        if grown > MAX_BUILT_ITEMS:
            raise _too_big("replace", grown, MAX_BUILT_ITEMS)


def _bounded_filter(original: Callable[..., Any], check: Callable[..., None]) -> Callable[..., Any]:
    @functools.wraps(original)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    return bounded


def _center_args(value: Any, width: Any = 80) -> None:
    _check_width(width, "center")


def _indent_args(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    _check_width(len(width) if isinstance(width, str) else width, "indent")


def _format_args(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_printf(str(value))


def _replace_args(eval_ctx: Any, value: Any, old: Any, new: Any, count: Any = None) -> None:
    _check_replace(str(value), str(old), str(new))


def _batch_args(value: Any, linecount: Any, fill_with: Any = None) -> None:
    if isinstance(linecount, int) and linecount > MAX_WIDTH:
        raise TemplateLimitError(f"batch size {linecount:,} too large; at most {MAX_WIDTH:,}")


class BoundedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox that also refuses the operations that allocate or compute far more than
    their text suggests (see the module docstring)."""

    intercepted_binops = frozenset({"**", "*", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for name, check in (
            ("center", _center_args),
            ("indent", _indent_args),
            ("format", _format_args),
            ("replace", _replace_args),
            ("batch", _batch_args),
        ):
            self.filters[name] = _bounded_filter(self.filters[name], check)

    def call_binop(self, context: Context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            _check_power(left, right)
        elif operator_ == "*":
            _check_repeat(left, right)
        elif operator_ == "+":
            _check_join(left, right)
        elif operator_ == "%" and isinstance(left, str):
            _check_printf(left)
        return _BINOPS[operator_](left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format_spec(value.__self__)
        return wrapped

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_str_method(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "**": operator.pow,
    "*": operator.mul,
    "+": operator.add,
    "%": operator.mod,
}

_env = BoundedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@functools.lru_cache(maxsize=1024)
def compile_template(source: str) -> Any:
    """The compiled template (cached by its text); a syntax error names the line."""
    try:
        return _env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc


def parse_template(source: str) -> Any:
    """The template's syntax tree, for analysis (its names). Parsed by the bounded sandbox, so
    that the analysis never folds ``10**(10**7)`` at compile time as a plain Environment would;
    a syntax error is raised as Jinja2's TemplateSyntaxError."""
    return _env.parse(source)


def render_limited(source: str, context: dict[str, Any], max_chars: int) -> str:
    """Render in this process, streaming, and stop past ``max_chars`` of output. No time limit:
    the server renders user-written templates through :mod:`msgpush.template_worker`."""
    template = compile_template(source)
    chunks: list[str] = []
    size = 0
    try:
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > max_chars:
                raise TemplateLimitError(f"output over {_kib(max_chars)}")
            chunks.append(chunk)
    except TemplateError:
        raise
    except UndefinedError as exc:
        raise TemplateError(f"template error: {exc.message}") from exc
    except MemoryError:
        raise TemplateLimitError("the template ran out of memory") from None
    except Exception as exc:  # the sandbox raises SecurityError and others; all are the template's
        raise TemplateError(f"template error: {type(exc).__name__}: {exc}") from exc
    return "".join(chunks)
