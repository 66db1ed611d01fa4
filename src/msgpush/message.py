"""The message a caller sends (``POST /api/v1/messages``): the contract's fields and their limits."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

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
    content: Annotated[str, Field(max_length=MAX_CONTENT_CHARS)] = ""
    format: Format = Format.markdown
    level: Level = Level.info
    category: Category = Category.other
    fields: Annotated[dict[ShortText, ShortText], Field(max_length=50)] = {}
    links: Annotated[list[Link], Field(max_length=10)] = []
    mentions: Mentions = Mentions()
    recipients: Recipients | None = None
    labels: Annotated[dict[ShortText, ShortText], Field(max_length=50)] = {}

    @model_validator(mode="after")
    def _not_empty(self) -> Message:
        if not self.title.strip() and not self.content.strip():
            raise ValueError("a message needs a title or content: both are empty")
        return self


class SendRequest(Message):
    """A message plus where it goes and how to de-duplicate it."""

    channels: Annotated[list[ShortText], Field(min_length=1, max_length=MAX_CHANNELS_PER_MESSAGE)]
    idempotency_key: Annotated[str, Field(min_length=1, max_length=255)] | None = None

    @field_validator("channels")
    @classmethod
    def _channel_refs(cls, value: list[str]) -> list[str]:
        cleaned = [ref.strip() for ref in value]
        if any(not ref for ref in cleaned):
            raise ValueError("channel references must be non-empty names or ids")
        return list(dict.fromkeys(cleaned))

    def message(self) -> Message:
        return Message.model_validate(self.model_dump(exclude={"channels", "idempotency_key"}))


class BatchSendRequest(Strict):
    messages: Annotated[list[SendRequest], Field(min_length=1, max_length=MAX_BATCH_MESSAGES)]


def message_payload(message: Message) -> dict[str, Any]:
    """The JSON stored for a message (and handed to renderers), with defaults filled in."""
    return message.model_dump(mode="json")
