"""The ``msgpush`` command: serve, worker, db, token, channel, send and event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from msgpush.datadir import private_dir, runtime_dir, unwritable
from msgpush.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from msgpush.client import Client

app = typer.Typer(help="msgpush: self-hosted message push service.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
channel_app = typer.Typer(help="Push channels (through the API).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(channel_app, name="channel")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (SQLite file, key file). Env: MSGPUSH_DATA_DIR."
    ),
]
Url = Annotated[
    str | None,
    typer.Option("--url", envvar="MSGPUSH_URL", help="msgpush server, e.g. http://127.0.0.1:8080"),
]
Token = Annotated[str | None, typer.Option("--token", envvar="MSGPUSH_TOKEN", help="API token")]


def _settings(data_dir: Path | None) -> Settings:
    """The settings from the environment; a bad ``MSGPUSH_*`` value ends the command with one
    line per problem, naming the variable."""
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "MSGPUSH_" + "_".join(str(part) for part in error["loc"]).upper()
            typer.echo(f"error: {name}: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None
    if data_dir is not None:
        settings.data_dir = data_dir
    return settings


def _writable(settings: Settings) -> Settings:
    """``settings`` once the data directory is known to be writable; else one line saying
    which directory and how to fix it, and exit code 2 (not a traceback from deep inside)."""
    problem = unwritable(settings)
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    return settings


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@contextlib.contextmanager
def _api(url: str | None, token: str | None) -> Iterator[Client]:
    """The API client for a command; an API error ends the command with its message.
    (Imported here: serve and worker never need the client.)"""
    from msgpush.client import Client, MsgpushError

    try:
        with Client(url, token) as client:
            yield client
    except MsgpushError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    data_dir: DataDir = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="API only; no delivery workers.")
    ] = False,
    delivery_processes: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=64,
            help="Also start this many delivery worker processes (MSGPUSH_DELIVERY_PROCESSES).",
        ),
    ] = None,
) -> None:
    """Run the API, the web console and the delivery workers (in this process, and in as many
    worker processes beside it as delivery_processes says)."""
    import uvicorn

    settings = _writable(_settings(data_dir))
    if delivery_processes is not None:
        settings.delivery_processes = delivery_processes
    # The egress policy never lets msgpush send to its own API; worker processes inherit this.
    settings.api_listen = ",".join(filter(None, (settings.api_listen, f"{host}:{port}")))
    os.environ["MSGPUSH_API_LISTEN"] = settings.api_listen
    if settings.delivery_processes and not no_worker:
        legacy = settings.data_dir / "metrics"  # where versions before kept them
        _forget_dead_processes(legacy)
        with contextlib.suppress(OSError):
            legacy.rmdir()  # unless another serve of an older version still uses it
        try:
            _metrics_in_files(runtime_dir(settings) / "metrics")
        except OSError as exc:
            typer.echo(f"error: {exc.strerror or exc}", err=True)
            raise typer.Exit(2) from None

    from msgpush.api.app import build  # after _metrics_in_files: it imports prometheus_client

    _logging(settings.log_level)
    where = (settings.database_url and "PostgreSQL") or f"SQLite in {settings.data_dir.resolve()}"
    typer.echo(f"msgpush: serving on http://{host}:{port} ({where})", err=True)
    uvicorn.run(
        build(settings, worker=not no_worker),
        host=host,
        port=port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def _metrics_in_files(directory: Path) -> None:
    """Worker processes may send: their metrics must reach /metrics too. prometheus_client's
    multiprocess mode keeps every process's figures in files; it has to be chosen before the
    library is first imported (see msgpush/metrics.py)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    private_dir(directory)
    _forget_dead_processes(directory)
    mine = directory / str(os.getpid())  # another serve may share the data directory
    private_dir(mine)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mine.resolve())


def _forget_dead_processes(directory: Path) -> None:
    """Remove the metrics files of serve processes that are gone."""
    if not directory.is_dir():
        return
    for earlier in directory.iterdir():
        if earlier.is_dir() and earlier.name.isdigit() and not _alive(int(earlier.name)):
            shutil.rmtree(earlier, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@app.command()
def worker(data_dir: DataDir = None) -> None:
    """Run delivery workers only (share the database with one or more `serve --no-worker`)."""
    import uvloop

    from msgpush.delivery.processes import listen_to_parent, tell_parent_ready
    from msgpush.runtime import Runtime, settle_gc

    settings = _writable(_settings(data_dir))
    _logging(settings.log_level)

    async def run() -> None:
        runtime = Runtime(settings, worker=True)
        await runtime.start()
        assert runtime.engine is not None
        settle_gc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        engine = runtime.engine
        if listen_to_parent(engine.notify, stop.set):
            # A child of serve: Ctrl-C reaches the whole group, and the parent decides.
            loop.add_signal_handler(signal.SIGINT, lambda: None)
            tell_parent_ready()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                if engine.idle_s() >= settings.delivery_process_idle_s:
                    break  # nothing to send for a while: serve sends again itself
        else:
            typer.echo("msgpush: worker running", err=True)
            await stop.wait()
        await runtime.stop()

    uvloop.run(run())


def _on_database(settings: Settings, work: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    """Run ``work`` on a database engine made for these settings, then let it go."""
    from msgpush.storage.db import make_engine

    async def run() -> None:
        engine = make_engine(settings)
        try:
            await work(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply database migrations (serve and worker also do this on start)."""
    from msgpush.storage.db import migrate

    _on_database(_settings(data_dir), migrate)
    typer.echo("database is up to date", err=True)


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Revision to go back to, e.g. 0003 or base")],
    data_dir: DataDir = None,
) -> None:
    """Undo migrations down to REVISION (stop every msgpush process first)."""
    from alembic.util import CommandError

    from msgpush.storage.db import downgrade

    try:
        _on_database(_settings(data_dir), lambda engine: downgrade(engine, revision))
    except CommandError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"database is at revision {revision}", err=True)


@db_app.command("backup")
def db_backup(
    file: Annotated[Path, typer.Argument(help="Where to write the copy (must not exist)")],
    data_dir: DataDir = None,
) -> None:
    """Copy the SQLite database while msgpush runs (a consistent snapshot)."""
    from msgpush.storage.db import backup_sqlite

    settings = _settings(data_dir)
    if settings.database_url and not settings.database_url.startswith("sqlite"):
        typer.echo(
            "error: msgpush runs on PostgreSQL here; back it up with PostgreSQL's own tools, "
            "e.g. pg_dump --format=custom --file=msgpush.dump DATABASE_URL "
            "(restore with pg_restore)",
            err=True,
        )
        raise typer.Exit(2)
    source = settings.sqlite_path()
    if not source.exists():
        typer.echo(f"error: no database at {source}; pass --data-dir", err=True)
        raise typer.Exit(2)
    if file.exists():
        typer.echo(f"error: {file} exists; name a new file", err=True)
        raise typer.Exit(2)
    try:
        size = backup_sqlite(source, file)
    except OSError as exc:
        typer.echo(f"error: cannot write {file}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"backed up {source} to {file} ({size:,} bytes)", err=True)


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin or sender")] = "sender",
    name: Annotated[str, typer.Option(help="What the token is for.")] = "cli",
    data_dir: DataDir = None,
) -> None:
    """Create an API token directly in the database; prints the token alone on stdout."""
    from msgpush.errors import ApiError
    from msgpush.runtime import Runtime

    settings = _writable(_settings(data_dir))

    async def run() -> str:
        runtime = Runtime(settings, worker=False)
        await runtime.start()
        try:
            token, _ = await runtime.tokens.create(name, role)
            return token
        finally:
            await runtime.stop()

    try:
        token = asyncio.run(run())
    except ApiError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(token)


def _parse_sets(values: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: use KEY=VALUE", param_hint="--set")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = config
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return config


@channel_app.command("list")
def channel_list(url: Url = None, token: Token = None) -> None:
    """List channels: id, name, type, enabled, last test."""
    with _api(url, token) as client:
        items = client.channels()
    for item in items:
        test = item.get("last_test") or {}
        tested = "never tested" if not test else ("test ok" if test.get("ok") else "test failed")
        state = "enabled" if item["enabled"] else "disabled"
        typer.echo(f"{item['id']}  {item['name']:<24} {item['type']:<14} {state:<9} {tested}")


@channel_app.command("add")
def channel_add(
    name: Annotated[str, typer.Argument(help="Unique channel name")],
    type: Annotated[str, typer.Option("--type", help="Channel type id, e.g. webhook")],
    config: Annotated[str | None, typer.Option(help="Settings as a JSON object")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="One setting KEY=VALUE (repeatable)")
    ] = None,
    description: str = "",
    url: Url = None,
    token: Token = None,
) -> None:
    """Create a channel. Settings from --config JSON and/or --set KEY=VALUE."""
    settings: dict[str, Any] = json.loads(config) if config else {}
    settings.update(_parse_sets(set_ or []))
    with _api(url, token) as client:
        created = client.create_channel(name, type, settings, description=description)
    typer.echo(created["id"])


@channel_app.command("test")
def channel_test(
    ref: Annotated[str, typer.Argument(help="Channel name or id")],
    url: Url = None,
    token: Token = None,
) -> None:
    """Send a Test Push now and print the outcome and diagnosis."""
    with _api(url, token) as client:
        result = client.test_channel(ref)
    verdict = "OK" if result["ok"] else "FAILED"
    typer.echo(f"{verdict} in {result['duration_ms']} ms (HTTP {result.get('status_code')})")
    if result.get("vendor_code") is not None:
        typer.echo(f"vendor: {result['vendor_code']} {result.get('vendor_message') or ''}")
    if result.get("diagnosis"):
        typer.echo(result["diagnosis"])
    if not result["ok"]:
        raise typer.Exit(1)


@channel_app.command("rm")
def channel_rm(
    ref: Annotated[str, typer.Argument(help="Channel name or id")],
    url: Url = None,
    token: Token = None,
) -> None:
    """Delete a channel (its unsent deliveries are cancelled)."""
    with _api(url, token) as client:
        client.delete_channel(ref)


@app.command()
def send(
    channel: Annotated[
        list[str], typer.Option("--channel", "-c", help="Channel name or id (repeatable)")
    ],
    title: Annotated[str, typer.Option("--title", "-t")] = "",
    content: Annotated[str, typer.Option("--content", "-m", help="Text, or - to read stdin")] = "",
    level: Annotated[str, typer.Option(help="info, success, warning, error, critical")] = "info",
    format: Annotated[str, typer.Option("--format", help="markdown or text")] = "markdown",
    category: Annotated[str, typer.Option(help="task, alert, data, system, other")] = "other",
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE label (repeatable)")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="De-duplicate retries of this send")
    ] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Send a message; prints the message id once it is stored."""
    text = sys.stdin.read() if content == "-" else content
    labels = {k: str(v) for k, v in _parse_sets(label or []).items()}
    extra: dict[str, Any] = {
        "level": level,
        "format": format,
        "category": category,
        "labels": labels,
    }
    if idempotency_key:
        extra["idempotency_key"] = idempotency_key
    with _api(url, token) as client:
        answer = client.send(channel, title, text, **extra)
    typer.echo(answer["id"])
    for delivery in answer["deliveries"]:
        typer.echo(f"  {delivery['id']}  {delivery['channel']}  {delivery['status']}", err=True)


@app.command()
def event(
    type: Annotated[str, typer.Argument(help="Event type, e.g. task.failed or alert.firing")],
    source: Annotated[str, typer.Option(help="Who reports it, e.g. scheduler")] = "",
    level: Annotated[
        str | None,
        typer.Option(help="info, success, warning, error, critical (default: the type's)"),
    ] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", "-d", help="KEY=VALUE data (repeatable)")
    ] = None,
    data_json: Annotated[
        str | None, typer.Option(help="Data as a JSON object, or - to read it from stdin")
    ] = None,
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE label (repeatable)")] = None,
    channel: Annotated[
        list[str] | None,
        typer.Option("--channel", "-c", help="Also send to this channel (repeatable)"),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="De-duplicate retries of this report")
    ] = None,
    occurred_at: Annotated[str | None, typer.Option(help="When it happened (ISO 8601)")] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Report an event; the rules route it. Prints the event id once it is stored."""
    body: dict[str, Any] = {}
    if data_json:
        raw = sys.stdin.read() if data_json == "-" else data_json
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--data-json") from None
        if not isinstance(body, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--data-json")
    body.update(_parse_sets(data or []))
    labels = {k: str(v) for k, v in _parse_sets(label or []).items()}
    with _api(url, token) as client:
        answer = client.event(
            type,
            body,
            source=source,
            level=level,
            labels=labels or None,
            channels=channel or None,
            idempotency_key=idempotency_key,
            occurred_at=occurred_at,
        )
    typer.echo(answer["id"])
    if answer.get("rules"):
        typer.echo(f"  rules: {', '.join(answer['rules'])}", err=True)
    for message in answer.get("messages", []):
        for delivery in message["deliveries"]:
            typer.echo(f"  {delivery['id']}  {delivery['channel']}  {delivery['status']}", err=True)
    for grouped in answer.get("grouped", []):
        typer.echo(
            f"  {grouped['channel']}: into digest {grouped['digest']} (due {grouped['due_at']})",
            err=True,
        )
    for warning in answer.get("warnings", []):
        typer.echo(f"  warning: {warning}", err=True)
