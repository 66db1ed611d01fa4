"""Sandboxed Jinja2: the one environment every user-written template renders in."""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered; the message says where and why."""


def compile_template(source: str) -> Any:
    try:
        return _env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc


def render_template(source: str, context: dict[str, Any]) -> str:
    template = compile_template(source)
    try:
        return str(template.render(**context))
    except UndefinedError as exc:
        raise TemplateError(f"template error: {exc.message}") from exc
    except Exception as exc:  # the sandbox raises SecurityError and others; all are the template's
        raise TemplateError(f"template error: {type(exc).__name__}: {exc}") from exc
