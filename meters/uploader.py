"""The uploader: drains the spool to the service, acknowledged chunk by acknowledged chunk.

One pass (`Uploader.sync_once`) takes each run with something to send and, in this order:

1. declares the run (``PUT /runs/{id}``: idempotent, so declaring it again after a service
   restart is harmless), from the control outbox (`meters.control`) or, for a run only the
   spool knows, from the spool's run metadata;
2. posts its pending chunks in batches (``POST /runs/{id}/chunks``, the `meters.wire` batch),
   bounded by chunk count, sample count and body size, and marks acknowledged (``stored`` or
   ``duplicate``) exactly the chunks the service listed;
3. posts its pending phases and declared work, then its metric points;
4. once no chunk is left, posts how the run ended (``/finish`` or ``/fail`` with the exit code)
   when the spool says it ended.

Failures
    *Transport errors, 5xx and 429* are the service's trouble: the pass stops, nothing is marked,
    and the next pass comes after an exponential backoff with jitter (capped; ``Retry-After``
    honoured). A request that timed out may have been stored: the chunk stays pending and its
    repeat is acknowledged as a duplicate, so nothing whose fate is unknown is ever dropped.
    *401/403* (the token is refused, or lacks the ``ingest`` scope) are final: asking again
    cannot help, so the pass stops, `PushResult.token_refused` says so, `drain` returns at once
    (no backoff, whatever its time budget), the background thread stops sending, and everything
    stays in the spool for a later ``thermoledger push`` with a good token. *Other 4xx* (409 a
    conflicting repeat, 422 a refused field, 413 too large) are bugs, not weather: the batch is
    split (at the chunk the error names, else in halves) until the refused chunks are isolated;
    they are logged with the service's message and recorded as rejected in the control outbox,
    so they stay in the spool (nothing is lost) but are not retried in a hot loop.
    ``thermoledger push --retry-rejected`` tries them again. A 404 on a run's chunks means the
    service does not know the run (a fresh database): the run is declared again, once per pass.
    Metric points (`meters.spool.Spool.pending_metrics`) go after the phases and work, in
    batches; a point the service refuses (409, 422) is marked with the reason in the spool and
    not sent again.

Threads
    `Uploader.start` runs passes in a daemon thread every ``poll_s`` seconds; `Uploader.stop`
    ends it and drains for a bounded time. `Uploader.drain` is the same loop on the caller's
    thread (``thermoledger push``). The uploader should have its own `meters.spool.Spool`
    object on the spool file (SQLite lets the sampler write while it reads), so reading a large
    batch never delays a sampler tick.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from .control import ControlStore, Message
from .spool import RunRecord, Spool, SpooledChunk
from .wire import (
    BATCH_BINARY,
    ChunkPayload,
    DevicePayload,
    MetricBatch,
    SampleEncoding,
    content_type,
    dumps_batch,
)

__all__ = [
    "Backoff",
    "PushResult",
    "Uploader",
    "push_later",
    "run_body_from_spool",
]

_LOG = logging.getLogger(__name__)
_USER_AGENT: Final = "thermoledger-meter/0.1"
_RUN_KINDS: Final = ("training", "inference", "eval", "other")
_CHUNK_FIELD: Final = re.compile(r"^chunks\[(\d+)\]")
_PURGE_EVERY_S: Final = 60.0
#: Most metric points in one ``POST /runs/{id}/metrics`` (the service takes up to 10 000).
_METRIC_BATCH: Final = 1000


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``initial_s · factor^k``, capped, scaled by [1 - jitter, 1].

    Args:
        initial_s: First delay, s.
        max_s: Cap, s (also caps a server's ``Retry-After``).
        factor: Growth per consecutive failure.
        jitter: Fraction of the delay drawn at random, so that many meters do not retry in step.
        rng: Random source (tests seed one).
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay_s(self, floor_s: float | None = None) -> float:
        """The delay before the next attempt, s; counts one more failure.

        Args:
            floor_s: The server's ``Retry-After``, s: the delay is at least this (capped).
        """
        base_s = min(self.max_s, self.initial_s * self.factor**self.failures)
        self.failures += 1
        delay_s = base_s * (1.0 - self.jitter * self.rng.random())
        if floor_s is not None and floor_s > 0:
            delay_s = max(delay_s, min(floor_s, self.max_s))
        return delay_s

    def reset(self) -> None:
        """Forget past failures (after a success)."""
        self.failures = 0


@dataclass(frozen=True, slots=True)
class PushResult:
    """What one or more passes did, and what is left.

    Attributes:
        stored: Chunks the service stored.
        duplicates: Chunks the service already had (acknowledged too).
        rejected: Chunks the service refused in these passes (kept in the spool, marked).
        remaining: Chunks still pending that are not refused.
        refused: Pending chunks marked refused (from these passes or earlier ones).
        messages_sent: Run declarations, phases, work, ends and metric batches the service
            acknowledged.
        messages_pending: Control messages and metric points still to send (refused ones not
            counted).
        blocked: Runs that cannot be uploaded (the service refuses the run itself), with why.
        error: The last failure that stopped a pass (None: the last pass completed).
        retry_after_s: The server's ``Retry-After`` with that failure, s.
        token_refused: The service refused the token (401, or 403: a missing scope): final,
            nothing more is sent until a push with another token.
    """

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    remaining: int = 0
    refused: int = 0
    messages_sent: int = 0
    messages_pending: int = 0
    blocked: tuple[str, ...] = ()
    error: str | None = None
    retry_after_s: float | None = None
    token_refused: bool = False

    @property
    def complete(self) -> bool:
        """Everything the spool holds for these runs reached the service."""
        return (
            self.remaining == 0
            and self.messages_pending == 0
            and self.refused == 0
            and not self.blocked
            and self.error is None
        )

    @property
    def acknowledged(self) -> int:
        """Chunks acknowledged (stored or duplicate)."""
        return self.stored + self.duplicates


class _Retryable(Exception):
    """The service is unavailable (transport, 5xx, 429): try later."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _TokenRefused(Exception):
    """The service refused the token (401) or its scope (403): final, no retry can help."""


class _Blocked(Exception):
    """This run cannot be uploaded now (the service does not accept the run)."""


@dataclass
class _Tally:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    messages_sent: int = 0
    blocked: dict[str, str] = field(default_factory=dict)


def push_later(server: str | None, spool_dir: object) -> str:
    """The command that pushes a spool later, for a line telling the user how.

    Args:
        server: The service URL (None: a placeholder).
        spool_dir: The spool directory.
    """
    where = shlex.quote(server) if server else "URL"
    return (
        f"thermoledger push --server {where} --spool-dir {shlex.quote(str(spool_dir))} "
        "--token-file FILE"
    )


def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).isoformat()


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def run_body_from_spool(record: RunRecord, devices: Sequence[DevicePayload]) -> dict[str, Any]:
    """A ``PUT /runs/{id}`` body for a run that only the spool knows (a bare `Sampler` run).

    The sampler's metadata may carry ``name``, ``kind``, ``tags`` (the `meters.api.Meter` puts
    them there); the start is the sampler's ``started_at_s``, else when the spool first saw the
    run; ``simulated`` is set when any device is simulated.
    """
    meta = record.metadata
    name = meta.get("name")
    kind = meta.get("kind")
    tags = meta.get("tags")
    started_s = meta.get("started_at_s")
    host = str(meta.get("host", "unknown"))
    return {
        "name": str(name) if isinstance(name, str) and name.strip() else f"run {record.run_id}",
        "kind": kind if kind in _RUN_KINDS else "other",
        "started_at": _iso(
            float(started_s)
            if isinstance(started_s, int | float) and math.isfinite(started_s)
            else record.created_at_s
        ),
        "tags": {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {},
        "host_info": {
            f"meter@{host}": {k: meta[k] for k in ("interval_s", "chunk_s", "backend") if k in meta}
        },
        "simulated": any(d.get("simulated", False) for d in devices),
    }


class Uploader:
    """Sends what the spool and the control outbox hold to the service (see module docstring).

    Args:
        spool: The chunk spool (preferably an object of its own on the spool file).
        control: The control outbox.
        api_url: The API root, e.g. ``http://ledger:8000/api/v1``
            (`meters.settings.api_base_url`).
        token: Bearer token with the ``ingest`` scope (None: send none).
        run_ids: Only these runs (a meter uploads its own run); None: every run in the spool.
        transport: httpx transport (tests pass ``httpx.MockTransport``).
        timeout_s: Per-request timeout, s.
        max_chunks: Most chunks in one batch.
        max_samples: Most raw samples in one batch.
        max_body_bytes: Largest body sent; a bigger batch is split.
        poll_s: Pause between passes of the background thread when all is well, s.
        backoff: Retry policy after failures.
        purge_after_s: Acknowledged chunks are deleted from the spool this long after their
            acknowledgement, s (their seqs are remembered, so numbering never repeats).
        samples_encoding: How batches travel (`meters.wire`): ``"binary"`` (default; the
            columnar binary batch, the cheapest for the service to check and store),
            ``"f64le-base64"`` (JSON with base64 sample columns) or ``"json"`` (plain JSON,
            for a service that predates both).
        logger: Where problems are logged.
    """

    def __init__(
        self,
        spool: Spool,
        control: ControlStore,
        *,
        api_url: str,
        token: str | None = None,
        run_ids: Collection[str] | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 10.0,
        max_chunks: int = 200,
        max_samples: int = 100_000,
        max_body_bytes: int = 4 * 1024 * 1024,
        poll_s: float = 2.0,
        backoff: Backoff | None = None,
        purge_after_s: float = 3600.0,
        samples_encoding: SampleEncoding = BATCH_BINARY,
        logger: logging.Logger | None = None,
    ) -> None:
        if max_chunks < 1 or max_samples < 1 or max_body_bytes < 1:
            raise ValueError("max_chunks, max_samples and max_body_bytes must be positive")
        self.spool = spool
        self.control = control
        self.run_ids = None if run_ids is None else tuple(run_ids)
        self.max_chunks = max_chunks
        self.max_samples = max_samples
        self.max_body_bytes = max_body_bytes
        self.poll_s = poll_s
        self.backoff = backoff if backoff is not None else Backoff()
        self.purge_after_s = purge_after_s
        self.samples_encoding: SampleEncoding = samples_encoding
        self._log = logger if logger is not None else _LOG
        headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=api_url.rstrip("/") + "/",
            headers=headers,
            timeout=timeout_s,
            transport=transport,
        )
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._unavailable = False  # the service is failing: say so once, and when it is back
        self._aborted = False  # set from a signal handler: a plain flag, no lock
        self._last_purge_s = -math.inf
        self._warned: set[str] = set()
        self._lifetime = _Tally()  # every pass of this uploader, the thread's included

    # -- driving ------------------------------------------------------------------------------

    def start(self) -> None:
        """Run passes in a daemon thread until `stop`."""
        if self._thread is not None:
            raise RuntimeError("the uploader thread is already running")
        self._thread = threading.Thread(
            target=self._loop, name="thermoledger-uploader", daemon=True
        )
        self._thread.start()

    def nudge(self) -> None:
        """Start the next pass now instead of after the poll pause."""
        self._wake.set()

    def stop(self, *, drain_timeout_s: float = 30.0) -> PushResult:
        """End the thread (a request in flight finishes first), then drain for a bounded time.

        Args:
            drain_timeout_s: How long to keep trying to send what is left, s (0: one pass).

        Returns:
            What is left after the drain, with the counts (stored, duplicates, rejected,
            messages sent) of every pass this uploader made, the background thread's included.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stop.clear()
        result = self.drain(timeout_s=drain_timeout_s)
        with self._sync_lock:
            total = self._lifetime
            return dataclasses.replace(
                result,
                stored=total.stored,
                duplicates=total.duplicates,
                rejected=total.rejected,
                messages_sent=total.messages_sent,
            )

    def drain(
        self, *, timeout_s: float = 30.0, sleep: Callable[[float], object] | None = None
    ) -> PushResult:
        """Pass after pass until everything is sent, only refusals are left, or time is up.

        Args:
            timeout_s: Time budget, s; the backoff waits are cut to fit it.
            sleep: How to wait between failing passes (default: an interruptible wait).
        """
        wait = sleep if sleep is not None else self._sliced_wait
        deadline_s = time.monotonic() + timeout_s
        tally = _Tally()
        self._aborted = False
        while True:
            result = self.sync_once()
            tally.stored += result.stored
            tally.duplicates += result.duplicates
            tally.rejected += result.rejected
            tally.messages_sent += result.messages_sent
            # Without an error, a pass leaves nothing it could still send: done. A refused
            # token is final: waiting cannot make the service accept it.
            if result.error is None or result.token_refused:
                break
            left_s = deadline_s - time.monotonic()
            if left_s <= 0 or self._aborted:
                break
            wait(min(self.backoff.next_delay_s(result.retry_after_s), left_s))
            if self._aborted:
                break
        return PushResult(
            stored=tally.stored,
            duplicates=tally.duplicates,
            rejected=tally.rejected,
            remaining=result.remaining,
            refused=result.refused,
            messages_sent=tally.messages_sent,
            messages_pending=result.messages_pending,
            blocked=result.blocked,
            error=result.error,
            retry_after_s=result.retry_after_s,
            token_refused=result.token_refused,
        )

    def abort_drain(self) -> None:
        """Make a running `drain` return after its current request (safe in a signal handler).

        It only sets a flag: a handler may interrupt code holding a lock, so it takes none.
        """
        self._aborted = True

    def _sliced_wait(self, delay_s: float) -> None:
        """Wait ``delay_s`` in short slices, so `abort_drain` is seen within ~0.1 s."""
        end_s = time.monotonic() + delay_s
        while not self._aborted and (left_s := end_s - time.monotonic()) > 0:
            time.sleep(min(left_s, 0.1))

    def close(self) -> None:
        """Stop the thread (no drain) and close the HTTP client; the stores stay open."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._client.close()

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one pass -----------------------------------------------------------------------------

    def sync_once(self) -> PushResult:
        """One pass over every run with something to send (see the module docstring)."""
        with self._sync_lock:
            tally = _Tally()
            error: str | None = None
            retry_after_s: float | None = None
            token_refused = False
            runs: list[str] = []
            try:
                runs = self._runs()
                for run_id in runs:
                    try:
                        self._sync_run(run_id, tally)
                    except _Blocked as e:
                        tally.blocked[run_id] = str(e)
            except _TokenRefused as e:
                error, token_refused = str(e), True
                self._warn_once(
                    "token",
                    "%s; not retried: the data stays in the spool until `thermoledger push` with "
                    "a token that has the ingest scope",
                    e,
                )
            except _Retryable as e:
                error, retry_after_s = str(e), e.retry_after_s
                if not self._unavailable:
                    self._log.warning(
                        "upload paused: %s; retrying with backoff (the data waits in the spool)",
                        e,
                    )
                self._unavailable = True
            except Exception as e:
                # A meter bug or a broken spool must not end the upload thread: back off, retry.
                error = f"{type(e).__name__}: {e}"
                self._warn_once(f"pass:{type(e).__name__}", "upload pass failed: %s", error)
            else:
                if self._unavailable:
                    self._log.info("the service is reachable again; upload resumed")
                self._unavailable = False
                self._maybe_purge()
            remaining, refused, pending_messages = self._left(runs)
            for name in ("stored", "duplicates", "rejected", "messages_sent"):
                setattr(self._lifetime, name, getattr(self._lifetime, name) + getattr(tally, name))
            return PushResult(
                stored=tally.stored,
                duplicates=tally.duplicates,
                rejected=tally.rejected,
                remaining=remaining,
                refused=refused,
                messages_sent=tally.messages_sent,
                messages_pending=pending_messages,
                blocked=tuple(f"{r}: {why}" for r, why in tally.blocked.items()),
                error=error,
                retry_after_s=retry_after_s,
                token_refused=token_refused,
            )

    def _runs(self) -> list[str]:
        if self.run_ids is not None:
            return list(self.run_ids)
        runs = [r.run_id for r in self.spool.runs()]
        known = set(runs)
        runs.extend(r for r in self.control.runs_with_pending() if r not in known)
        known.update(runs)
        runs.extend(r for r in self.spool.runs_with_pending_metrics() if r not in known)
        return runs

    def _left(self, runs: Sequence[str]) -> tuple[int, int, int]:
        remaining = refused = messages = 0
        try:
            for run_id in runs:
                pending = self.spool.counts(run_id).pending
                # Refused chunks are never acknowledged (a retry clears the refusal first).
                refused_here = min(len(self.control.rejected_chunks(run_id)), pending)
                remaining += pending - refused_here
                refused += refused_here
                messages += len(self.control.messages(run_id, pending_only=True))
                messages += self.spool.pending_metric_count(run_id)
        except Exception as e:
            self._warn_once("left", "cannot count what is left in the spool: %s", e)
        return remaining, refused, messages

    def _sync_run(self, run_id: str, tally: _Tally) -> None:
        if not _is_uuid(run_id):
            raise _Blocked(f"run id {run_id!r} is not a UUID; the service cannot take it")
        record = self.spool.run_status(run_id)
        self._derive_end(run_id, record)
        redeclared = self._declare(run_id, record, tally, force=False)
        devices: dict[str, DevicePayload] | None = None
        while True:
            refused = self.control.rejected_keys(run_id)
            pending = [
                c
                for c in self.spool.pending(run_id, limit=self.max_chunks + len(refused))
                if c.key not in refused
            ]
            if not pending:
                break
            if devices is None:
                devices = {d["key"]: d for d in self.spool.devices(run_id)}
            batch = self._first_batch(pending)
            before = (tally.stored, tally.duplicates, tally.rejected)
            redeclared = self._post_chunks(run_id, batch, devices, tally, redeclared)
            if (tally.stored, tally.duplicates, tally.rejected) == before:
                # A 200 that acknowledges none of the batch: asking again now would loop.
                raise _Retryable(f"the service acknowledged none of {len(batch)} chunks")
        for message in self.control.messages(run_id, pending_only=True):
            if message.kind in ("phase", "work"):
                redeclared = self._send_message(message, record, tally, redeclared)
        redeclared = self._send_metrics(run_id, record, tally, redeclared)
        # The end goes last, once every chunk the service would take is there (a refused
        # chunk does not hold it back: the job's outcome is worth knowing regardless).
        end = self.control.get(run_id, "end")
        if end is not None and end.pending and not self._chunks_left(run_id):
            self._send_message(end, record, tally, redeclared)

    def _chunks_left(self, run_id: str) -> bool:
        refused = self.control.rejected_keys(run_id)
        return any(c.key not in refused for c in self.spool.pending(run_id, limit=len(refused) + 1))

    def _first_batch(self, pending: Sequence[SpooledChunk]) -> list[SpooledChunk]:
        batch: list[SpooledChunk] = []
        samples = 0
        for chunk in pending:
            n = int(chunk.payload["n"])  # the chunk's own samples
            if batch and (len(batch) >= self.max_chunks or samples + n > self.max_samples):
                break
            batch.append(chunk)
            samples += n
        return batch

    # -- the run, messages, end ---------------------------------------------------------------

    def _derive_end(self, run_id: str, record: RunRecord | None) -> None:
        """Queue ``end`` from the spool's run status (the sampler's record of how it ended)."""
        if record is None or record.status not in ("finished", "failed"):
            return
        self.control.put(
            run_id,
            "end",
            {
                "status": record.status,
                "exit_code": record.exit_code,
                "ended_at": _iso(record.updated_at_s),
            },
        )

    def _declare(
        self, run_id: str, record: RunRecord | None, tally: _Tally, *, force: bool
    ) -> bool:
        """PUT the run if it is not declared yet (or ``force``); returns whether it PUT."""
        message = self.control.get(run_id, "run")
        if message is None:
            if record is None:
                raise _Blocked("neither the spool nor the control file declares this run")
            body = run_body_from_spool(record, self.spool.devices(run_id))
            self.control.put(run_id, "run", body, if_absent=True)
            message = self.control.get(run_id, "run")
            assert message is not None
        if message.rejected is not None and not force:
            return False
        if not (force or message.pending):
            return False
        response = self._request("PUT", f"runs/{run_id}", json=message.body)
        if response.status_code in (200, 201):
            self.control.mark_sent(message)
            tally.messages_sent += 1
            return True
        reason = self._refusal(response)
        self.control.mark_rejected(message, reason)
        if f"declare:{run_id}:{reason}" not in self._warned:
            self._warned.add(f"declare:{run_id}:{reason}")
            self._log.error(
                "the service refused to declare run %s (%s); its chunks cannot be sent until "
                "that is fixed; they wait in the spool",
                run_id,
                reason,
            )
        raise _Blocked(f"run declaration refused: {reason}")

    def _send_message(
        self, message: Message, record: RunRecord | None, tally: _Tally, redeclared: bool
    ) -> bool:
        """POST a phase, work or end message; returns whether the run was re-declared."""
        run_id = message.run_id
        if message.kind == "phase":
            method, path, body = "POST", f"runs/{run_id}/phases", message.body
        elif message.kind == "work":
            method, path, body = "POST", f"runs/{run_id}/work", message.body
        else:
            verb = "finish" if message.body.get("status") == "finished" else "fail"
            body = {k: message.body[k] for k in ("exit_code", "ended_at") if k in message.body}
            method, path = "POST", f"runs/{run_id}/{verb}"
        response = self._request(method, path, json=body)
        if response.status_code == 404 and not redeclared:
            self._declare(run_id, record, tally, force=True)
            redeclared = True
            response = self._request(method, path, json=body)
        if response.is_success:
            self.control.mark_sent(message)
            tally.messages_sent += 1
        elif message.kind == "end" and response.status_code == 409:
            # Another meter of the job (or the job itself) ended the run another way first.
            self._log.info("run %s was already ended: %s", run_id, self._refusal(response))
            self.control.mark_sent(message)
        else:
            reason = self._refusal(response)
            self.control.mark_rejected(message, reason)
            self._log.error(
                "the service refused the %s message of run %s (%s); it is kept in %s",
                message.kind,
                run_id,
                reason,
                self.control.path,
            )
        return redeclared

    def _send_metrics(
        self, run_id: str, record: RunRecord | None, tally: _Tally, redeclared: bool
    ) -> bool:
        """POST the run's pending metric points in batches; returns whether it re-declared.

        A refused point (409: another value under its key; 422) is kept in the spool with the
        reason, and the rest of its batch is sent again without it.
        """
        while True:
            points = self.spool.pending_metrics(run_id, limit=_METRIC_BATCH)
            if not points:
                return redeclared
            body = MetricBatch(points=points)
            path = f"runs/{run_id}/metrics"
            response = self._request("POST", path, json=body)
            if response.status_code == 404 and not redeclared:
                self._declare(run_id, record, tally, force=True)
                redeclared = True
                response = self._request("POST", path, json=body)
            keys = [(p["name"], p["step"]) for p in points]
            if response.is_success:
                self.spool.mark_metrics_sent(run_id, keys)
                tally.messages_sent += 1
                continue
            reason = self._refusal(response)
            named = _named_point(response)
            refused = keys if named is None or named >= len(keys) else [keys[named]]
            self.spool.reject_metrics(run_id, refused, reason)
            self._log.error(
                "the service refused %d metric point(s) of run %s (%s); they are kept in %s",
                len(refused),
                run_id,
                reason,
                self.spool.path,
            )

    # -- chunks -------------------------------------------------------------------------------

    def _post_chunks(
        self,
        run_id: str,
        batch: Sequence[SpooledChunk],
        devices: Mapping[str, DevicePayload],
        tally: _Tally,
        redeclared: bool,
    ) -> bool:
        """POST one batch (splitting it if refused); returns whether the run was re-declared."""
        payloads: list[ChunkPayload] = [c.payload for c in batch]
        needed = sorted({p["device_key"] for p in payloads})
        missing = [key for key in needed if key not in devices]
        if missing:
            # The spool refuses a chunk of an unknown device, so this is a corrupt spool.
            self._reject(batch, 0, f"devices {missing} are not in the spool", tally)
            return redeclared
        body = dumps_batch(
            [devices[key] for key in needed], payloads, samples_encoding=self.samples_encoding
        )
        if len(body) > self.max_body_bytes and len(batch) > 1:
            return self._split(run_id, batch, devices, tally, redeclared, None)
        response = self._request(
            "POST",
            f"runs/{run_id}/chunks",
            content=body,
            headers={"Content-Type": content_type(self.samples_encoding)},
        )
        if response.status_code == 404 and not redeclared:
            self._declare(run_id, self.spool.run_status(run_id), tally, force=True)
            return self._post_chunks(run_id, batch, devices, tally, True)
        if response.status_code == 404:
            raise _Blocked(f"the service does not know the run: {self._refusal(response)}")
        if response.status_code == 200:
            self._acknowledge(run_id, batch, response, tally)
            return redeclared
        if len(batch) == 1:
            self._reject(batch, response.status_code, self._refusal(response), tally)
            return redeclared
        return self._split(run_id, batch, devices, tally, redeclared, response)

    def _split(
        self,
        run_id: str,
        batch: Sequence[SpooledChunk],
        devices: Mapping[str, DevicePayload],
        tally: _Tally,
        redeclared: bool,
        response: httpx.Response | None,
    ) -> bool:
        """Isolate refused chunks: the one the error names first, else bisect."""
        index = _named_chunk(response)
        if index is not None and 0 <= index < len(batch):
            parts = [[batch[index]], [c for i, c in enumerate(batch) if i != index]]
        else:
            middle = len(batch) // 2
            parts = [list(batch[:middle]), list(batch[middle:])]
        for part in parts:
            if part:
                redeclared = self._post_chunks(run_id, part, devices, tally, redeclared)
        return redeclared

    def _acknowledge(
        self, run_id: str, batch: Sequence[SpooledChunk], response: httpx.Response, tally: _Tally
    ) -> None:
        try:
            acks = response.json()["chunks"]
            listed = {(str(a["device_key"]), int(a["seq"])): str(a["status"]) for a in acks}
        except (ValueError, KeyError, TypeError) as e:
            raise _Retryable(f"the service answered 200 with an unreadable body ({e})") from e
        keys = []
        for chunk in batch:
            status = listed.get((chunk.key.device_key, chunk.key.seq))
            if status == "stored":
                tally.stored += 1
            elif status == "duplicate":
                tally.duplicates += 1
            else:
                continue  # not acknowledged: stays pending
            keys.append(chunk.key)
        # Remember the seqs first: a purge after the ack must never free a seq for reuse.
        self.control.note_seqs(run_id, keys)
        self.spool.mark_acked(keys)

    def _reject(
        self, batch: Sequence[SpooledChunk], status_code: int, reason: str, tally: _Tally
    ) -> None:
        keys = [c.key for c in batch]
        tally.rejected += len(keys)
        self.control.reject_chunks(keys, status_code=status_code, reason=reason)
        for key in keys:
            self._log.error(
                "the service refused chunk %s/%s#%d (%s); it stays in the spool, marked "
                "rejected; after fixing the cause, `thermoledger push --retry-rejected`",
                key.run_id,
                key.device_key,
                key.seq,
                reason,
            )

    # -- HTTP ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; raises `_Retryable` for what should be retried later, `_TokenRefused`
        for a refused token (final)."""
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise _Retryable(f"{type(e).__name__} talking to {self._client.base_url}: {e}") from e
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retryable(
                f"HTTP {status} from {method} {path}: {_detail(response)}",
                _retry_after_s(response),
            )
        if status in (401, 403):
            # 403 from the API is always the token's scope (or the operator's token).
            raise _TokenRefused(
                f"the service refused the token (HTTP {status}: {_detail(response)})"
            )
        return response

    def _refusal(self, response: httpx.Response) -> str:
        return f"HTTP {response.status_code}: {_detail(response)}"

    def _maybe_purge(self) -> None:
        now_s = time.monotonic()
        if now_s - self._last_purge_s < _PURGE_EVERY_S:
            return
        self._last_purge_s = now_s
        try:
            self.spool.purge_acked(older_than_s=self.purge_after_s)
        except Exception as e:
            self._warn_once("purge", "purging acknowledged chunks failed: %s", e)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.sync_once()
            except Exception as e:  # sync_once catches its own; this is a last line of defence
                self._warn_once("loop", "upload pass failed: %s", e)
                result = PushResult(error=str(e))
            if result.token_refused:
                return  # final: the spool keeps it all for a push with another token
            if result.error is not None or result.blocked:
                delay_s = self.backoff.next_delay_s(result.retry_after_s)
            else:
                self.backoff.reset()
                delay_s = self.poll_s
            self._wake.wait(delay_s)
            self._wake.clear()

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            self._log.warning(message, *args)


def _detail(response: httpx.Response) -> str:
    """The service's error message (``field: detail``), or the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])[:500]
    return str(data)[:300]


def _named_chunk(response: httpx.Response | None) -> int | None:
    """The batch position of the chunk an error response names first (``chunks[3]...``)."""
    if response is None:
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    fields = []
    if isinstance(data, dict):
        fields.append(data.get("field"))
        errors = data.get("errors")
        if isinstance(errors, list):
            fields.extend(e.get("field") for e in errors if isinstance(e, dict))
    for name in fields:
        if isinstance(name, str) and (match := _CHUNK_FIELD.match(name)):
            return int(match.group(1))
    return None


def _named_point(response: httpx.Response) -> int | None:
    """The index of the metric point a refusal names (``points[3].value``), if any."""
    try:
        field_path = response.json().get("field")
    except (ValueError, AttributeError):
        return None
    match = re.match(r"^points\[(\d+)\]", field_path) if isinstance(field_path, str) else None
    return int(match.group(1)) if match else None


def _retry_after_s(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None  # the HTTP-date form: the backoff decides
    return value if math.isfinite(value) and value >= 0 else None
