"""What platforms report and how it is routed: the event, the rule and the template override."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import re2
from pydantic import AfterValidator, Field, field_validator, model_validator

from msgpush.message import (
    LEVEL_ORDER,
    ChannelRef,
    Format,
    Level,
    Recipients,
    ShortText,
    Strict,
)
from msgpush.templating import TemplateError, compile_template

MAX_DATA_BYTES = 256 * 1024
MAX_TEMPLATE_CHARS = 65_536
MAX_GROUP_WINDOW_S = 86_400
MAX_RULE_CHANNELS = 50

_TYPE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_PATTERN = re.compile(r"[A-Za-z0-9_*?-]+(\.[A-Za-z0-9_*?-]+)*")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")
_GROUP_KEY = re.compile(r"(data\.)?[A-Za-z_][A-Za-z0-9_.:-]*")


def _event_type(value: str) -> str:
    if not _TYPE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an event type: dot-separated words of letters, digits, _ and -, "
            "like task.failed"
        )
    return value


def _type_pattern(value: str) -> str:
    if not _PATTERN.fullmatch(value):
        raise ValueError(f"{value!r} is not an event type pattern: like task.failed, alert.* or *")
    return value


def _label_name(value: str) -> str:
    if not _LABEL_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a label name: letters, digits, _ . : - ")
    return value


def _group_key(value: str) -> str:
    if not _GROUP_KEY.fullmatch(value):
        raise ValueError(f"{value!r}: name a label (alertname) or a data field (data.task)")
    return value


EventType = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_event_type)]
TypePattern = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_type_pattern)]
LabelName = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_label_name)]
GroupKey = Annotated[str, Field(min_length=1, max_length=133), AfterValidator(_group_key)]
GroupBy = Annotated[list[GroupKey], Field(max_length=10)]
GroupWindow = Annotated[int, Field(ge=0, le=MAX_GROUP_WINDOW_S)]


def category_of(event_type: str) -> str:
    """The message category an event type belongs to (task.failed -> task)."""
    head = event_type.split(".", 1)[0]
    return head if head in ("task", "alert", "data", "system") else "other"


def at_least(level: str, minimum: str) -> bool:
    return LEVEL_ORDER[Level(level)] >= LEVEL_ORDER[Level(minimum)]


# -- the event ------------------------------------------------------------------------------


class Event(Strict):
    """What a platform module reports (``POST /api/v1/events``)."""

    type: EventType
    source: Annotated[str, Field(max_length=128)] = ""
    level: Level | None = None  # None: the event type's usual level (task.failed: error)
    data: dict[str, Any] = Field(default_factory=dict)
    labels: Annotated[dict[LabelName, ShortText], Field(max_length=50, default_factory=dict)]
    channels: Annotated[list[ChannelRef], Field(max_length=MAX_RULE_CHANNELS, default_factory=list)]
    idempotency_key: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    occurred_at: datetime | None = None
    # grouping of the event's own channels (rules carry their own)
    group_by: GroupBy | None = None
    group_window_s: GroupWindow | None = None

    @field_validator("data")
    @classmethod
    def _data_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise ValueError(f"cannot be stored as JSON: {exc}") from None
        if size > MAX_DATA_BYTES:
            raise ValueError(f"is {size:,} bytes as JSON; an event's data takes {MAX_DATA_BYTES:,}")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if not 2000 <= value.year <= 9999:
            raise ValueError("must be a time between the years 2000 and 9999")
        return value

    def occurred_ms(self, default: int) -> int:
        return int(self.occurred_at.timestamp() * 1000) if self.occurred_at else default


# -- templates ------------------------------------------------------------------------------

TemplateText = Annotated[str, Field(max_length=MAX_TEMPLATE_CHARS)]


def check_template(source: str) -> str:
    """Compile a template now, so that a mistake is a 422 naming the line when it is saved."""
    try:
        compile_template(source)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    return source


class TemplateOverride(Strict):
    """A title and/or content template (sandboxed Jinja2) replacing an event type's built-in one;
    a part left out keeps the built-in part."""

    title: Annotated[TemplateText, AfterValidator(check_template)] | None = None
    content: Annotated[TemplateText, AfterValidator(check_template)] | None = None
    format: Format | None = None

    @model_validator(mode="after")
    def _something(self) -> TemplateOverride:
        if not (self.title or "").strip() and not (self.content or "").strip():
            raise ValueError("a template needs a title or a content template (or both)")
        return self


# -- the rule -------------------------------------------------------------------------------

MATCH_OPERATORS = ("=~", "!~", "!=")


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the caller's 422, not a log line


@functools.lru_cache(maxsize=4096)
def label_regex(pattern: str) -> Any:
    """A label condition's pattern compiled by RE2: linear time in the value whatever the
    pattern (no catastrophic backtracking), and the syntax Alertmanager matchers use. Matched
    against the whole value, as Alertmanager anchors its matchers. Cached: rules are rebuilt
    from storage every second and share patterns."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(
            f"{pattern!r} is not a regular expression msgpush can run ({reason}); label "
            "conditions use RE2 syntax, as Alertmanager does: no backreferences (\\1) or "
            "lookaround ((?=, (?!, (?<=); write the alternatives out instead"
        ) from None


def _matcher(value: str) -> str:
    if value.startswith(("=~", "!~")):
        label_regex(value[2:])
    return value


LabelMatcher = Annotated[str, Field(max_length=1024), AfterValidator(_matcher)]


class Rule(Strict):
    """Which events go to which channels, to whom, how they read and how storms are grouped."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: Annotated[str, Field(max_length=2000)] = ""
    event_types: Annotated[
        list[TypePattern], Field(min_length=1, max_length=50, default_factory=lambda: ["*"])
    ]
    min_level: Level = Level.info
    # "prod" (equal), "!=prod", "=~prod|staging" (regex, whole value), "!~test.*"
    labels: Annotated[dict[LabelName, LabelMatcher], Field(max_length=50, default_factory=dict)]
    channels: Annotated[list[ChannelRef], Field(min_length=1, max_length=MAX_RULE_CHANNELS)]
    recipients: Recipients | None = None
    template: TemplateOverride | None = None
    group_by: GroupBy = Field(default_factory=list)
    group_window_s: GroupWindow | None = None
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("a rule needs a name")
        if value.startswith("rule_"):
            raise ValueError("a rule name must not start with rule_ (ids do)")
        return value
