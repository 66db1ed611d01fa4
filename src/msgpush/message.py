"""The message a caller sends (``POST /api/v1/messages``): the contract's fields and their limits."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationInfo,
    field_validator,
)

MAX_TITLE_CHARS = 512
MAX_CONTENT_CHARS = 65_536
MAX_CHANNELS_PER_MESSAGE = 50
MAX_BATCH_MESSAGES = 1_000


class Level(StrEnum):
    info = "info"
    success = "success"
    warning = "warning"
    error = "error"
    critical = "critical"


LEVEL_ORDER = {level: index for index, level in enumerate(Level)}


class Category(StrEnum):
    task = "task"
    alert = "alert"
    data = "data"
    system = "system"
    other = "other"


class Format(StrEnum):
    markdown = "markdown"
    text = "text"


class Strict(BaseModel):
    """Unknown fields are a caller's mistake worth naming, not something to drop silently."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


ShortText = Annotated[str, Field(max_length=1024)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


def _channel_ref(value: str) -> str:
    value = _no_nul(value.strip())
    if not value:
        raise ValueError("a channel reference must be a non-empty name or id")
    return value


ChannelRef = Annotated[str, Field(max_length=1024), AfterValidator(_channel_ref)]


class Link(Strict):
    title: Annotated[str, Field(min_length=1, max_length=128)]
    url: HttpUrl


class Mentions(Strict):
    all: bool = False
    user_ids: Annotated[list[ShortText], Field(max_length=100)] = []
    mobiles: Annotated[list[ShortText], Field(max_length=100)] = []
    emails: Annotated[list[ShortText], Field(max_length=100)] = []

    def any(self) -> bool:
        return self.all or bool(self.user_ids or self.mobiles or self.emails)


class Recipients(Strict):
    users: Annotated[list[ShortText], Field(max_length=5000)] = []
    departments: Annotated[list[ShortText], Field(max_length=1000)] = []
    tags: Annotated[list[ShortText], Field(max_length=1000)] = []
    chats: Annotated[list[ShortText], Field(max_length=1000)] = []


class Message(Strict):
    """What one message says, independent of where it goes."""

    title: Annotated[str, Field(max_length=MAX_TITLE_CHARS)] = ""
    content: Annotated[str, Field(max_length=MAX_CONTENT_CHARS, validate_default=True)] = ""
    format: Format = Format.markdown
    level: Level = Level.info
    category: Category = Category.other
    fields: Annotated[dict[ShortText, ShortText], Field(max_length=50)] = {}
    links: Annotated[list[Link], Field(max_length=10)] = []
    mentions: Mentions = Mentions()
    recipients: Recipients | None = None
    labels: Annotated[dict[ShortText, ShortText], Field(max_length=50)] = {}

    @field_validator("content")
    @classmethod
    def _not_empty(cls, value: str, info: ValidationInfo) -> str:
        title = info.data.get("title")  # absent when the title itself was invalid
        if isinstance(title, str) and not title.strip() and not value.strip():
            raise ValueError("a message needs a title or content: both are empty")
        return value


class SendRequest(Message):
    """A message plus where it goes and how to de-duplicate it."""

    # kept as sent (repeats included), so that an error's index is the caller's; a channel named
    # twice (or by name and by id) still gets one delivery: resolving the targets dedupes them
    channels: Annotated[list[ChannelRef], Field(min_length=1, max_length=MAX_CHANNELS_PER_MESSAGE)]
    idempotency_key: (
        Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_no_nul)] | None
    ) = None

    def payload(self) -> dict[str, Any]:
        """The JSON stored for the message (and handed to renderers), with defaults filled in:
        the request's own message fields, already validated."""
        return self.model_dump(mode="json", exclude={"channels", "idempotency_key"})


class BatchSendRequest(Strict):
    messages: Annotated[list[SendRequest], Field(min_length=1, max_length=MAX_BATCH_MESSAGES)]
