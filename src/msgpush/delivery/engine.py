"""The delivery engine: claim due deliveries with a lease, send, record every attempt, retry.

One engine runs in each ``serve`` (unless ``--no-worker``) and ``worker`` process. It wakes
when this process accepts a message, and polls otherwise, so deliveries accepted by another
process, retries that fall due and leases of crashed workers are all picked up.

When storage refuses a write (disk full, read-only, database unreachable), a delivery already
sent keeps its result in memory (``AttemptRecord``) and the engine writes it as soon as storage
works again; meanwhile it claims nothing more and keeps its claims, so no delivery is sent
twice because msgpush could not write down that it was sent. At most ``MSGPUSH_WORKERS``
results wait so: one per send slot. One claimed but not yet sent is given back likewise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import re
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from msgpush import metrics
from msgpush.channel_service import ChannelService, LoadedChannel
from msgpush.channels.base import Outcome, SendContext, TokenFetchFailed, TokenSource
from msgpush.delivery.http import HttpClient, Transcript
from msgpush.delivery.limits import LocalPacer, RateLimiter
from msgpush.ids import new_id, now_ms
from msgpush.message import Category, Level, Message
from msgpush.settings import Settings
from msgpush.storage.db import StorageUnavailable
from msgpush.storage.queue import AttemptRecord, Claimed, Queue

log = logging.getLogger(__name__)

CLAIM_BATCH = 100
# Claim again once a quarter of the send slots are free, or this long after the first one
# freed: one claim (a write and its commit) per several sends instead of one per send.
REFILL_WAIT_S = 0.005
# More due work than send slots for this long is a backlog (``on_backlog``): claims come back
# full, and mostly with deliveries that go out. Deliveries put back to wait for their rate
# window do not count: more processes would not send them sooner.
BACKLOG_AFTER_S = 0.5
MAX_TIMER_MS = 300_000  # later work is found by polling
JANITOR_EVERY_S = 5.0
HOLD_MS = 2_000
# While storage refuses writes: how often results held in memory are tried again, and how
# long the claim loop waits after a refused claim.
UNRECORDED_RETRY_S = 0.25
STORAGE_RETRY_S = 1.0
TEST_MESSAGE = Message(
    title="msgpush Test Push",
    content="This is a test message from msgpush. If you can read it, the channel works.",
    level=Level.info,
    category=Category.system,
)


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float
    max_delay_s: float
    max_attempts: int
    max_age_s: float

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Exponential backoff with jitter (half fixed, half random), or the vendor's own wait
        (Retry-After, a throttle's length), which is honoured even beyond the backoff cap:
        retrying sooner only draws the same refusal."""
        if retry_after_s is not None:
            return min(self.max_age_s, max(retry_after_s, 0.0))
        ceiling = min(self.max_delay_s, self.base_s * 2 ** (attempt - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


class Engine:
    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        channels: ChannelService,
        limiter: RateLimiter,
        http: HttpClient,
        tokens: TokenSource | None = None,
    ) -> None:
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{new_id('w')[-6:]}"
        self._settings = settings
        self._queue = queue
        self._channels = channels
        self._limiter = limiter
        self._http = http
        self._tokens = tokens
        self._pacer = LocalPacer(settings.rate_window_scale)
        # a booked send time this close is waited for with the claim held (well inside the
        # lease); a later one puts the delivery back in the queue until then
        self._hold_ms = int(min(HOLD_MS, settings.lease_s * 1000 / 4))
        self.policy = RetryPolicy(
            settings.retry_base_s,
            settings.retry_max_delay_s,
            settings.max_attempts,
            settings.max_age_s,
        )
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._busy_since: float | None = None
        self._deferred = 0  # deliveries put back for their rate window since the last claim
        self.last_work = time.monotonic()
        self.on_backlog: Callable[[], None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # what storage refused: results of sends made, claims of sends not made
        self._unrecorded: dict[str, AttemptRecord] = {}
        self._unreleased: set[str] = set()
        self._all_written = asyncio.Event()
        self._all_written.set()
        self._writing_later: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="msgpush-claim"),
            asyncio.create_task(self._janitor_loop(), name="msgpush-janitor"),
        ]

    async def stop(self, grace_s: float = 5.0) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=grace_s)
        unfinished = list(self._inflight)
        for task in self._inflight.values():
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if self._writing_later is not None:
            self._writing_later.cancel()
            await asyncio.gather(self._writing_later, return_exceptions=True)
        if self._unrecorded or self._unreleased:
            await self._write_held()  # a last try
        if self._unrecorded:
            log.error(
                "storage still refuses writes: %d delivery results are lost with this process; "
                "those deliveries are sent again when their lease ends",
                len(self._unrecorded),
            )
        try:
            await self._queue.release(unfinished, self.owner)
        except Exception:  # the lease runs out instead
            log.warning("could not release %d claims on shutdown", len(unfinished))

    def notify(self) -> None:
        """Something became due (a message was accepted here): look now, not at the next poll."""
        self._wake.set()

    def pause(self) -> None:
        """Claim nothing more (sends in flight finish): worker processes are sending instead."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()
        self._busy_since = None
        self.notify()

    @property
    def unrecorded(self) -> int:
        """Results of sends made that wait in memory for storage to work again."""
        return len(self._unrecorded)

    def idle_s(self) -> float:
        """Seconds since this engine last had anything to send."""
        return 0.0 if self._inflight else time.monotonic() - self.last_work

    def _wake_at(self, delay_ms: int) -> None:
        """Look again when a delivery this process put off falls due, not a poll later."""
        if delay_ms <= MAX_TIMER_MS:
            asyncio.get_running_loop().call_later(max(delay_ms, 0) / 1000, self.notify)

    # -- loops -------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        lease_ms = int(self._settings.lease_s * 1000)
        workers = self._settings.workers
        refill_at = max(1, workers // 4)
        while not self._stopping:
            if not self._running.is_set():
                await self._running.wait()
                continue
            if not self._all_written.is_set():  # back-pressure: storage refused results
                await self._all_written.wait()
                continue
            free = workers - len(self._inflight)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            if free < refill_at and self._inflight:
                await asyncio.sleep(REFILL_WAIT_S)
                free = workers - len(self._inflight)
            self._wake.clear()
            want = min(free, CLAIM_BATCH)
            try:
                claimed = await self._queue.claim(self.owner, want, lease_ms)
                if claimed:
                    self.last_work = time.monotonic()
                    await self._dispatch(claimed)
                self._watch_backlog(len(claimed), want)
            except asyncio.CancelledError:
                raise
            except StorageUnavailable:  # the writer logs the fault once
                await asyncio.sleep(STORAGE_RETRY_S)
                continue
            except Exception:
                log.exception("claiming deliveries failed; retrying shortly")
                await asyncio.sleep(1.0)
                continue
            if len(claimed) < want:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._settings.poll_s)

    def _watch_backlog(self, claimed: int, wanted: int) -> None:
        deferred, self._deferred = self._deferred, 0
        if claimed < wanted or deferred * 2 > claimed:
            self._busy_since = None
            return
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        elif now - self._busy_since >= BACKLOG_AFTER_S and self.on_backlog is not None:
            self._busy_since = now
            self.on_backlog()

    async def _dispatch(self, claimed: list[Claimed]) -> None:
        payloads = await self._queue.payloads(list({c.message_id for c in claimed}))
        for item in claimed:
            task = asyncio.create_task(self._deliver(item, payloads.get(item.message_id)))
            self._inflight[item.id] = task
            task.add_done_callback(functools.partial(self._finished, item.id))
        metrics.INFLIGHT.set(len(self._inflight))

    def _finished(self, delivery_id: str, _task: object = None) -> None:
        self._inflight.pop(delivery_id, None)
        metrics.INFLIGHT.set(len(self._inflight))
        self._slot_free.set()

    async def _janitor_loop(self) -> None:
        rounds = 0
        while not self._stopping:
            try:
                # results held in memory go first: this process's own leases may have run out
                # while storage failed, and releasing them would send those deliveries again
                if not self._unrecorded:
                    released = await self._queue.release_expired_leases()
                    if released:
                        log.warning(
                            "%d deliveries were left mid-send by a stopped worker; resending",
                            released,
                        )
                        self.notify()
                if rounds % 12 == 0:
                    await self._limiter.forget_old()
            except asyncio.CancelledError:
                raise
            except StorageUnavailable:
                pass
            except Exception:
                log.exception("janitor round failed")
            rounds += 1
            await asyncio.sleep(JANITOR_EVERY_S)

    # -- one delivery ------------------------------------------------------------------------

    async def _deliver(self, claimed: Claimed, stored: tuple[str, str | None, int] | None) -> None:
        try:
            await self._send_and_record(claimed, stored)
        except StorageUnavailable:
            # refused before anything was sent (a rate slot, a put-back): give the claim back
            # when storage works, rather than when the lease ends
            self._hold(claimed.id, None)
        except Exception:
            log.exception("delivery %s: unexpected error; its lease returns it", claimed.id)

    async def _record(self, attempt: AttemptRecord) -> None:
        """Write a send's result; if storage refuses it, hold it in memory until it works."""
        try:
            await self._queue.record(attempt)
        except StorageUnavailable:
            self._hold(attempt.delivery_id, attempt)

    def _hold(self, delivery_id: str, attempt: AttemptRecord | None) -> None:
        if attempt is None:
            self._unreleased.add(delivery_id)
        else:
            self._unrecorded[delivery_id] = attempt
        self._all_written.clear()
        if self._writing_later is None:
            self._writing_later = asyncio.create_task(self._write_later(), name="msgpush-held")

    async def _write_later(self) -> None:
        """Try what storage refused again, every ``UNRECORDED_RETRY_S``, until all is written."""
        written = 0
        try:
            while self._unrecorded or self._unreleased:
                await asyncio.sleep(UNRECORDED_RETRY_S)
                try:
                    written += await self._write_held()
                except Exception:  # never a reason to stop trying
                    log.exception("writing held delivery results failed; trying again")
        finally:
            self._writing_later = None
        if written:
            log.warning("storage works again: wrote %d delivery results held meanwhile", written)

    async def _write_held(self) -> int:
        """One try: every held result (sharing one commit) and claim to give back. Returns
        how many results were written."""
        held = list(self._unrecorded.values())
        outcomes = await asyncio.gather(
            *(self._queue.record(attempt) for attempt in held), return_exceptions=True
        )
        written = 0
        for attempt, outcome in zip(held, outcomes, strict=True):
            if isinstance(outcome, StorageUnavailable):
                continue
            if isinstance(outcome, BaseException):
                log.error(
                    "delivery %s: its result cannot be written: %r", attempt.delivery_id, outcome
                )
            else:
                written += 1
            del self._unrecorded[attempt.delivery_id]
        if self._unreleased and not self._unrecorded:
            unsent = list(self._unreleased)
            with contextlib.suppress(StorageUnavailable):
                await self._queue.release(unsent, self.owner)
                self._unreleased.difference_update(unsent)
                self.notify()
        if not self._unrecorded and not self._unreleased:
            self._all_written.set()
        return written

    async def _send_and_record(
        self, claimed: Claimed, stored: tuple[str, str | None, int] | None
    ) -> None:
        number = claimed.attempts + 1
        started = now_ms()
        channel = await self._channels.load(claimed.channel_id)
        if stored is None:
            outcome = Outcome.failed("the message is missing from the database")
        elif channel is None:
            outcome = Outcome.failed("the channel was deleted before this message was sent")
        elif not channel.enabled:
            outcome = Outcome.failed(
                f"channel {channel.name!r} was disabled before this message was sent; "
                "enable it and resend"
            )
        else:
            stamp = None
            if channel.limited:
                slot = await self._limiter.acquire(channel.id, channel.limit, hold_ms=self._hold_ms)
                if not slot.reserved:
                    self._deferred += 1
                    metrics.RATE_LIMIT_WAITS.inc()
                    await self._queue.defer(claimed.id, self.owner, now_ms() + slot.wait_ms)
                    self._wake_at(slot.wait_ms)
                    return
                if slot.wait_ms:  # the booked moment: every process paces by the one log
                    self._deferred += 1  # waiting for a window is no backlog of sends
                    await asyncio.sleep(slot.wait_ms / 1000)
                stamp = await self._pacer.wait_turn(channel.id, channel.limit)
            payload, event_json, created_at = stored  # the event a message came from, if any
            message = Message.model_validate_json(payload)
            event = orjson.loads(event_json) if event_json else None
            try:
                await self._attempt(claimed, channel, message, created_at, number, started, event)
            finally:
                if stamp is not None:
                    self._pacer.sent(channel.id, stamp)
            return
        await self._record(
            AttemptRecord(
                delivery_id=claimed.id,
                number=number,
                started_at=started,
                duration_ms=0,
                outcome="failed",
                status="failed",
                diagnosis=outcome.diagnosis,
                lease_owner=self.owner,
            )
        )
        metrics.DELIVERIES_FINISHED.labels("unknown", "failed").inc()

    async def _attempt(
        self,
        claimed: Claimed,
        channel: LoadedChannel,
        message: Message,
        created_at: int,
        number: int,
        started: int,
        event: dict[str, Any] | None = None,
    ) -> None:
        transcript = Transcript(secrets=channel.secrets.copy())
        ctx = SendContext(
            delivery_id=claimed.id,
            attempt=number,
            exchange=self._http.exchanger(transcript),
            message_id=claimed.message_id,
            created_at_ms=created_at,
            event=event,
            tokens=self._tokens,
            secrets=transcript.secrets,
        )
        clock = time.perf_counter()
        outcome = await send_once(channel, message, ctx)
        duration_ms = int((time.perf_counter() - clock) * 1000)
        type_id = channel.type.type_id
        metrics.attempt_counter(type_id, outcome.kind).inc()
        metrics.attempt_seconds(type_id).observe(duration_ms / 1000)

        next_at: int | None = None
        diagnosis = outcome.diagnosis
        if outcome.kind == "delivered":
            status = "delivered"
            metrics.ENQUEUE_TO_DELIVERED.observe(max(0, now_ms() - created_at) / 1000)
        elif outcome.kind == "failed":
            status = "failed"
        else:
            status, next_at, diagnosis = self._after_retryable(
                number - claimed.budget_attempts, claimed.budget_since, outcome
            )
        if status in ("delivered", "failed"):
            metrics.finished_counter(type_id, status).inc()
        elif next_at is not None:
            self._wake_at(next_at - now_ms())
        await self._record(
            AttemptRecord(
                delivery_id=claimed.id,
                number=number,
                started_at=started,
                duration_ms=duration_ms,
                outcome=outcome.kind,
                status=status,
                next_attempt_at=next_at,
                status_code=outcome.status_code if outcome.status_code else transcript.last_status,
                vendor_code=outcome.vendor_code,
                vendor_message=outcome.vendor_message,
                diagnosis=diagnosis,
                warning=outcome.warning,
                request=transcript.request_json(),
                lease_owner=self.owner,
            )
        )

    def _after_retryable(
        self, number: int, since: int, outcome: Outcome
    ) -> tuple[str, int | None, str | None]:
        """After a retryable error: when to try again, or that the budget is spent."""
        policy = self.policy
        reason = outcome.diagnosis or "retryable error"
        last = reason.removesuffix("; will retry")  # quoted in a final verdict, it would mislead
        if number >= policy.max_attempts:
            return "failed", None, f"gave up after {number} attempts; last error: {last}"
        now = now_ms()
        next_at = now + int(policy.delay_s(number, outcome.retry_after_s) * 1000)
        if next_at - since > policy.max_age_s * 1000:
            if outcome.retry_after_s is not None:
                left_s = max(0.0, (since + policy.max_age_s * 1000 - now) / 1000)
                return (
                    "failed",
                    None,
                    f"gave up: the receiver asked to wait {outcome.retry_after_s:.0f} s before "
                    f"trying again, longer than the {left_s:.0f} s left of this delivery's "
                    f"MSGPUSH_MAX_AGE_S ({policy.max_age_s:g} s); resend it once the receiver "
                    f"accepts messages again; last error: {last}",
                )
            age_h = policy.max_age_s / 3600
            return "failed", None, f"gave up: still failing after {age_h:g} h; last error: {last}"
        return "retrying", next_at, reason


async def test_push(
    http: HttpClient,
    limiter: RateLimiter | None,
    channel: LoadedChannel,
    tokens: TokenSource | None = None,
) -> dict[str, Any]:
    """Send a labelled test message now, once, and say what happened.

    A saved channel (``limiter`` given) takes a slot in its rate window like any send, so a
    test never draws the vendor's rate-limit error either.
    """
    clock = time.perf_counter()
    if limiter is not None:
        slot = await limiter.acquire(channel.id, channel.limit)
        if not slot.reserved:
            return {
                "ok": False,
                "status_code": None,
                "vendor_code": None,
                "vendor_message": None,
                "diagnosis": (
                    f"the channel's rate window is full; the next send fits in "
                    f"{slot.wait_ms / 1000:.1f} s"
                ),
                "duration_ms": 0,
                "request": None,
            }
    transcript = Transcript(secrets=channel.secrets.copy())
    test_id = new_id("test")
    ctx = SendContext(
        delivery_id=test_id,
        attempt=1,
        exchange=http.exchanger(transcript),
        message_id=test_id,
        created_at_ms=now_ms(),
        is_test=True,
        tokens=tokens,
        secrets=transcript.secrets,
    )
    outcome = await send_once(channel, TEST_MESSAGE, ctx)
    duration_ms = int((time.perf_counter() - clock) * 1000)
    diagnosis = outcome.diagnosis
    if outcome.kind == "delivered":
        diagnosis = outcome.warning or "delivered: check that the test message arrived"
    elif diagnosis:  # a test is never retried, whatever a delivery would do
        diagnosis = re.sub(r";? ?(and )?will retry[^.;]*", "", diagnosis).strip()
    return {
        "ok": outcome.kind == "delivered",
        "status_code": outcome.status_code or transcript.last_status,
        "vendor_code": outcome.vendor_code,
        "vendor_message": outcome.vendor_message,
        "diagnosis": diagnosis,
        "duration_ms": duration_ms,
        "request": orjson.loads(transcript.request_json() or "null"),
    }


async def send_once(channel: LoadedChannel, message: Message, ctx: SendContext) -> Outcome:
    """One attempt, with one immediate repeat when the vendor says the access token is stale."""
    try:
        outcome = await channel.type.send(message, channel.settings, ctx)
        if outcome.kind == "refresh_token":
            outcome = await channel.type.send(message, channel.settings, ctx)
            if outcome.kind == "refresh_token":
                outcome = Outcome.retry(outcome.diagnosis or "access token refused twice")
        return outcome
    except TokenFetchFailed as failed:
        return failed.outcome
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        log.error(
            "channel %s (%s) raised %s at %s:%s: %s",
            channel.name,
            channel.type.type_id,
            type(exc).__name__,
            frame.filename,
            frame.lineno,
            ctx.secrets.redact(str(exc)),
        )
        return Outcome.retry(f"internal error while sending ({type(exc).__name__}); will retry")
