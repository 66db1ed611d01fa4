"""The database tables (SQLAlchemy Core). Migrations in ``migrations/`` create and evolve them.

Times are integer milliseconds since the epoch and structured values are JSON text, so that the
same statements run unchanged on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

channels = Table(
    "channels",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("type", String(32), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("config", Text, nullable=False),  # JSON of the non-secret settings
    Column("secrets", Text, nullable=False, default=""),  # Fernet token of the secret settings
    Column("rate_limit", Text, nullable=True),  # JSON {"per_second"?, "per_minute"?, ...}
    Column("last_test", Text, nullable=True),  # JSON of the last Test Push outcome
    Column("last_test_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
    Column("idempotency_key", String(255), nullable=True, unique=True),
    Column("payload", Text, nullable=False),  # JSON of msgpush.message.Message
    Column("event_id", String(40), nullable=True),
    Index("ix_messages_event", "event_id"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("message_id", String(40), nullable=False, index=True),
    Column("channel_id", String(40), nullable=False),
    Column("channel_name", String(128), nullable=False),
    Column("channel_type", String(32), nullable=False),
    # queued | sending | retrying | delivered | failed | cancelled
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    # a manual resend starts a fresh budget: attempts and age count from here
    Column("budget_attempts", Integer, nullable=False, default=0),
    Column("budget_since", BigInteger, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("warning", Text, nullable=True),
    Index("ix_deliveries_due", "status", "next_attempt_at"),
    Index("ix_deliveries_channel_created", "channel_id", "created_at"),
    Index("ix_deliveries_created", "created_at"),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", String(40), nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    # delivered | retry | failed | refresh_token | interrupted (its process died mid-send)
    Column("outcome", String(16), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("vendor_code", String(64), nullable=True),
    Column("vendor_message", Text, nullable=True),
    Column("diagnosis", Text, nullable=True),
    Column("next_attempt_at", BigInteger, nullable=True),
    Column("request", Text, nullable=True),  # the rendered request with secrets removed
    Column("response", Text, nullable=True),  # an excerpt of the answer
    Column("worker", String(64), nullable=True),  # which process made the attempt
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger, nullable=True),
)

rate_events = Table(
    "rate_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel_id", String(40), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Index("ix_rate_events_channel_at", "channel_id", "at_ms"),
)

vendor_tokens = Table(
    "vendor_tokens",
    metadata,
    Column("key", String(64), primary_key=True),  # SHA-256 of the credentials, never them
    Column("token", Text, nullable=False),  # Fernet-encrypted
    Column("expires_at", BigInteger, nullable=False),
    Column("fetched_at", BigInteger, nullable=False),
)

# -- events and routing (msgpush.events) --------------------------------------------------------

events = Table(
    "events",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("type", String(128), nullable=False),
    Column("source", String(128), nullable=False),
    Column("level", String(16), nullable=False),
    Column("occurred_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("idempotency_key", String(255), nullable=True, unique=True),
    # alerts: Alertmanager's fingerprint or a hash of the labels, to pair resolved with firing
    Column("fingerprint", String(64), nullable=True),
    Column("body", Text, nullable=False),  # JSON: what the webhook envelope's "event" carries
    Column("routing", Text, nullable=True),  # JSON: the 202 answer (rules, messages, digests)
    Index("ix_events_fingerprint", "fingerprint"),
    Index("ix_events_created", "created_at"),
)

rules = Table(
    "rules",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("enabled", Boolean, nullable=False),
    Column("body", Text, nullable=False),  # JSON of the rule (msgpush.events.models.Rule)
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

event_templates = Table(
    "event_templates",
    metadata,
    Column("event_type", String(128), primary_key=True),  # a type or a pattern (alert.*)
    Column("body", Text, nullable=False),  # JSON {"title", "content", "format"}
    Column("updated_at", BigInteger, nullable=False),
)

# One row per (route, channel, group key): the alert-storm window and its pending digest.
event_groups = Table(
    "event_groups",
    metadata,
    Column("id", String(64), primary_key=True),  # hash of route, channel, group_by and values
    Column("route", String(40), nullable=False),  # rule id, or "event" for an event's own channels
    Column("channel_id", String(40), nullable=False),
    Column("labels", Text, nullable=False),  # JSON: the group's label values
    Column("window_end", BigInteger, nullable=True),
    Column("digest_message_id", String(40), nullable=True),
    Column("digest_event_id", String(40), nullable=True),
    Column("summary", Text, nullable=False),  # JSON: the digest's counts, instances, times
    Column("firing", Text, nullable=False),  # JSON: fingerprint -> {instance, since}
    Column("closed", Boolean, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_event_groups_route", "route"),
)

# Who changed which channel, rule, template or token, when, and which fields (names only).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", String(40), primary_key=True),  # time-sortable: pages go newest first by id
    Column("at", BigInteger, nullable=False),
    Column("token_id", String(40), nullable=True),  # None: msgpush itself (first start, CLI)
    Column("token_name", String(128), nullable=True),
    Column("address", String(64), nullable=True),
    Column("action", String(16), nullable=False),  # create | update | delete | enable | ...
    Column("kind", String(16), nullable=False),  # channel | rule | template | token
    Column("object_id", String(128), nullable=False),  # a template's is its event type
    Column("object_name", String(128), nullable=True),
    Column("fields", Text, nullable=False),  # JSON list of changed field names, never values
    Index("ix_audit_log_object", "object_id"),
    Index("ix_audit_log_token", "token_id"),
    Index("ix_audit_log_at", "at"),
)

# One row per running process that claims deliveries (its ``lease_owner``), renewed every few
# seconds: claims of an owner whose heartbeat stopped are released (storage/owners.py).
process_owners = Table(
    "process_owners",
    metadata,
    Column("owner", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),  # the database's clock on PostgreSQL
)
