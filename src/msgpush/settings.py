"""Runtime settings, read from ``MSGPUSH_*`` environment variables (and CLI flags)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_delivery_processes(cores: int | None) -> int:
    """One sending process per core, up to 4 (past that SQLite's single writer is the limit);
    none on a single core, where another process only competes with the API for it."""
    cores = cores or 1
    return min(cores, 4) if cores > 1 else 0


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)


def parse_duration_s(text: str) -> float | None:
    """``30d``, ``12h``, ``90m``, ``15s``, ``2w`` or plain seconds; ``off`` (or ``0``) is None.
    Raises ValueError naming the accepted forms."""
    if text.strip().lower() in ("off", "none", "never", "0"):
        return None
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: write a number with a unit, such as 30d, 12h, 90m or "
            "15s (s, m, h, d, w), or off"
        )
    seconds = float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]
    return seconds or None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MSGPUSH_", extra="ignore")

    data_dir: Path = Field(default=Path("./msgpush-data"), description="SQLite file and key file")
    database_url: str | None = Field(
        default=None, description="postgresql://… to use PostgreSQL; default SQLite in data_dir"
    )
    secret_key: str | None = Field(
        default=None, description="Fernet key for secrets at rest; default a 0600 key file"
    )
    admin_token: str | None = Field(
        default=None, description="the first admin token, instead of a generated one"
    )
    runtime_dir: Path | None = Field(
        default=None,
        description=(
            "files that live only while msgpush runs (worker processes' metrics); default a "
            "private directory in $XDG_RUNTIME_DIR, /run, /dev/shm or the temporary directory, "
            "never the data directory's disk"
        ),
    )
    # Delivery engine
    workers: int = Field(default=128, ge=1, le=1024, description="concurrent sends per process")
    delivery_processes: int = Field(
        default_factory=lambda: default_delivery_processes(os.cpu_count()),
        ge=0,
        le=64,
        description=(
            "worker processes `serve` starts when deliveries fall behind its own engine "
            "(default: one per core, at most 4; 0 on one core: never)"
        ),
    )
    delivery_process_idle_s: float = Field(
        default=30.0, gt=0, description="a worker process started by serve exits this idle"
    )
    lease_s: float = Field(
        default=60.0, gt=0, description="claim lease; a dead worker's claims return"
    )
    poll_s: float = Field(default=1.0, gt=0, description="how often idle workers look for due work")
    retry_base_s: float = Field(default=2.0, gt=0, description="first retry delay")
    retry_max_delay_s: float = Field(default=900.0, gt=0, description="longest delay between tries")
    max_attempts: int = Field(default=10, ge=1, description="attempts before a delivery fails")
    max_age_s: float = Field(default=86_400.0, gt=0, description="age after which retries stop")
    rate_window_scale: float = Field(
        default=1.0, gt=0, le=1, description="shrinks rate windows (tests only: 0.05 = 60 s -> 3 s)"
    )
    # API
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, description="larger request bodies get 413"
    )
    idempotency_ttl_s: float = Field(default=86_400.0, gt=0)
    log_level: str = "info"
    # Operations
    retention: str = Field(
        default="30d",
        description=(
            "how long finished messages, deliveries, attempts and events are kept: a duration "
            "such as 30d, 12h, 90m, 15s, or off"
        ),
    )

    @field_validator("retention")
    @classmethod
    def _retention_is_a_duration(cls, value: str) -> str:
        parse_duration_s(value)
        return value

    def retention_s(self) -> float | None:
        """The retention in seconds, or None when it is off."""
        return parse_duration_s(self.retention)

    # Outbound (egress policy: msgpush/egress.py)
    egress_allow: str = Field(
        default="",
        description=(
            "CIDRs and host names msgpush may send to although the default policy refuses them "
            "(loopback, link-local, …), e.g. 127.0.0.1 for a local receiver"
        ),
    )
    egress_deny: str = Field(
        default="", description="CIDRs and host names msgpush never sends to (wins over ALLOW)"
    )
    api_listen: str = Field(
        default="",
        description=(
            "host:port list of msgpush's own API, never a target; serve adds its own (and its "
            "worker processes inherit it); set it for a standalone `msgpush worker`"
        ),
    )
    proxy: str | None = Field(
        default=None, description="http(s)://[user:password@]host:port proxy for all outbound"
    )
    no_proxy: str = Field(
        default="", description="host names (and subdomains), addresses, CIDRs sent to directly"
    )
    ca_file: Path | None = Field(
        default=None, description="PEM bundle of CA certificates trusted besides the system's"
    )

    @field_validator("egress_allow", "egress_deny", "no_proxy")
    @classmethod
    def _target_list(cls, value: str, info: ValidationInfo) -> str:
        from msgpush.egress import parse_targets

        if value.strip() != "*" or info.field_name != "no_proxy":
            parse_targets(value, f"MSGPUSH_{str(info.field_name).upper()}")
        return value

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("MSGPUSH_PROXY must be an http(s)://host:port URL")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"MSGPUSH_CA_FILE: no file {str(value)!r}")
        return value

    def sqlite_path(self) -> Path:
        return self.data_dir / "msgpush.db"

    def resolved_database_url(self) -> str:
        """The SQLAlchemy async URL: PostgreSQL via asyncpg, else SQLite via aiosqlite."""
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{self.sqlite_path().resolve()}"
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url
