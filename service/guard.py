"""The request guard: who a request is, from its headers, before its body or a slot.

A slow or unauthenticated client must not stall the service. Before this guard, fifteen
connections sending a body one byte every few seconds, with no token, held all fifteen
in-flight slots until they closed, and 8 MiB bodies without a token were read and parsed
before the 401. `RequestGuard` sits outside the app (inside `service.metrics`' timing) and
puts every HTTP request in one of three lanes, from its headers alone:

* **authenticated**: a valid ``Authorization: Bearer`` token (an API token or the operator
  token), checked by `TokenGate`. It takes one of ``Settings.max_in_flight`` slots, then its
  body (at most ``Settings.max_body_bytes``) is read in full within ``Settings.body_timeout_s``
  (408 beyond it) before the app sees the request, so no route holds a database transaction
  (SQLite's write lock, `db.engine`) while a body trickles in, and a slow body frees its slot
  at the deadline.
* **API without valid credentials** (any path under ``/api/``): 401 from the headers, in the
  error table's shape, without reading a byte of the body or taking a slot; the connection is
  closed when a body was announced.
* **everything else** (pages, ``POST /login`` and ``/logout``, which authenticate by cookie;
  ``/readyz``, ``/docs``, ``/static``): its body is capped at
  ``Settings.max_unauthenticated_body_bytes`` (413) and must arrive within
  ``min(UNAUTHENTICATED_BODY_TIMEOUT_S, body_timeout_s)``; it is read *before* a slot is taken,
  and the slot comes from a small pool of its own (`UNAUTHENTICATED_SLOTS`), so these requests
  never take a slot an authenticated client could use. ``/healthz`` and ``/metrics`` take no
  slot at all (a busy service still answers its liveness probe and its scrape).

A client that disconnects while its body is being read is a client error, not a 500: the
app never sees the request (nothing was written), and the request log records it once as
499 at info level (`service.metrics.mark_client_gone`).

Why slots at all: routes run in a bounded thread pool and hold a connection from a bounded
database pool. With more concurrent requests than threads, every thread can end up waiting for
a connection or a lock that only a request *without* a thread could release, and the process
stalls until timeouts fire (seen with 45 SQLite uploaders, or 50 sharing one token on
PostgreSQL). Queueing in front of the app keeps the pools' users few enough to finish.

The guard only decides who may *enter*; the route still authenticates in full
(`service.auth.authenticate`), so a revoked token is refused exactly, even while the gate
still remembers it as valid.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import Principal, bearer_token, hash_token, operator_principal, well_formed
from .errors import BodyTimeout, PayloadTooLarge, Unauthenticated, error_response, rule_for
from .metrics import mark_client_gone
from .settings import Settings

__all__ = [
    "BYPASS_PATHS",
    "CHECK_SLOTS",
    "REFUSED_TTL_S",
    "RENEW_SLOTS",
    "UNAUTHENTICATED_BODY_TIMEOUT_S",
    "UNAUTHENTICATED_SLOTS",
    "VERIFIED_TTL_S",
    "RequestGuard",
    "TokenGate",
    "verified_principal",
]

#: Paths that take no slot (probes and the scrape answer however busy the service is).
BYPASS_PATHS: Final = frozenset({"/healthz", "/metrics"})
#: Requests under this prefix need a valid bearer token before anything else.
API_PATH_PREFIX: Final = "/api/"
#: Slots for requests without a valid bearer token (pages, the login form, /readyz, /docs).
UNAUTHENTICATED_SLOTS: Final = 4
#: Longest time the body of a request without a valid bearer token may take, s (at most
#: ``Settings.body_timeout_s``): a login form is a few hundred bytes.
UNAUTHENTICATED_BODY_TIMEOUT_S: Final = 5.0
#: How long a token found valid is let through without asking the database again, s. The
#: route authenticates in full anyway; this only bounds how long a revoked token still
#: passes the gate (and may hold a slot up to the body deadline).
VERIFIED_TTL_S: Final = 5.0
#: How long a well-formed token found invalid is refused without asking the database, s.
REFUSED_TTL_S: Final = 5.0
#: How long a token once found valid keeps its place in the renewal lane, s.
KNOWN_KEEP_S: Final = 600.0
#: Most tokens remembered, valid and refused each (oldest forgotten first).
CACHE_ENTRIES: Final = 4096
#: Database checks at once of tokens not seen valid lately (a flood of made-up tokens waits
#: here, and only here).
CHECK_SLOTS: Final = 2
#: Database re-checks at once of tokens seen valid lately: never queued behind the above.
RENEW_SLOTS: Final = 2

_PRINCIPAL_KEY: Final = "thermoledger.principal"
_CLOSE: Final = {"Connection": "close"}


def verified_principal(scope: Scope) -> Principal | None:
    """Who the guard let this request in as (None: no valid bearer token, or no guard).

    For checks that must come before the body is read (`service.deps.AdminFirstRoute`); the
    route's own authentication is the one that counts.
    """
    principal = scope.get(_PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else None


class _LoopBound:
    """Semaphores of one event loop, made again when the app finds itself on another (each
    `TestClient` runs its own loop; asyncio primitives belong to one)."""

    def __init__(self, **sizes: int) -> None:
        self._sizes = sizes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    def __getitem__(self, name: str) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._semaphores = {k: asyncio.Semaphore(n) for k, n in self._sizes.items()}
            self._loop = loop
        return self._semaphores[name]


class TokenGate:
    """Checks bearer tokens from the headers, cheaply and with bounded database work.

    The operator token is compared in constant time and a malformed token is refused, both
    without the database. Any other token is looked up by its SHA-256 in two small caches:
    found valid within `VERIFIED_TTL_S` (a cache hit costs about a microsecond, the ingest
    hot path), or found invalid within `REFUSED_TTL_S`. A miss asks the database off the event
    loop, in a worker thread, through one of two small lanes: `RENEW_SLOTS` for tokens seen
    valid lately and `CHECK_SLOTS` for the rest, so a flood of made-up tokens queues behind
    itself while real clients' periodic re-checks go past it.

    Args:
        verify: Looks a token up in the database and says who it acts for (blocking; runs in
            a worker thread). Raises `Unauthenticated` when it is not valid.
        settings: For the operator token.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        verify: Callable[[str], Principal],
        *,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._verify = verify
        self._settings = settings
        self._clock = clock
        self._valid: dict[str, tuple[float, Principal]] = {}
        self._refused: dict[str, tuple[float, str]] = {}
        self._lanes = _LoopBound(check=CHECK_SLOTS, renew=RENEW_SLOTS)
        #: Database look-ups made so far (for tests and debugging).
        self.lookups = 0

    async def check(self, token: str) -> Principal:
        """Who ``token`` acts for.

        Raises:
            Unauthenticated: Malformed, unknown, revoked or expired (the route's messages).
            Exception: What the look-up raised when the database failed (the error table
                maps it, e.g. 503).
        """
        operator = operator_principal(token, self._settings)
        if operator is not None:
            return operator
        if not well_formed(token):
            raise Unauthenticated("malformed token: expected tl_<prefix>_<secret>")
        key = hash_token(token)
        known = self._cached(key)
        if isinstance(known, Principal):
            return known
        lane = "renew" if known else "check"
        async with self._lanes[lane]:
            again = self._cached(key)  # another request may have looked it up meanwhile
            if isinstance(again, Principal):
                return again
            self.lookups += 1
            try:
                principal = await anyio.to_thread.run_sync(self._verify, token)
            except Unauthenticated as e:
                self._valid.pop(key, None)
                _remember(self._refused, key, (self._clock() + REFUSED_TTL_S, str(e)))
                raise
            _remember(self._valid, key, (self._clock() + VERIFIED_TTL_S, principal))
            return principal

    def _cached(self, key: str) -> Principal | bool:
        """The principal of a fresh valid entry; else whether the token was valid lately.

        Raises:
            Unauthenticated: A fresh refusal.
        """
        now = self._clock()
        valid = self._valid.get(key)
        if valid is not None:
            fresh_until, principal = valid
            if now < fresh_until:
                return principal
            return now < fresh_until + KNOWN_KEEP_S
        refused = self._refused.get(key)
        if refused is not None and now < refused[0]:
            raise Unauthenticated(refused[1])
        return False


_V = TypeVar("_V")


def _remember(cache: dict[str, tuple[float, _V]], key: str, entry: tuple[float, _V]) -> None:
    """Put ``entry`` last in ``cache``, forgetting the oldest entries beyond `CACHE_ENTRIES`."""
    cache.pop(key, None)
    cache[key] = entry
    excess = len(cache) - CACHE_ENTRIES
    if excess > 0:
        for old in list(cache)[: max(excess, CACHE_ENTRIES // 8)]:
            del cache[old]


@dataclass(frozen=True, slots=True)
class _Lane:
    """How one kind of request gets in: its slots (None: none), body cap and deadline."""

    slots: str | None
    max_body_bytes: int
    body_timeout_s: float
    read_before_slot: bool


class _Refused(Exception):
    """The body cannot be let in; ``error`` says why (the guard answers with it)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Gone(Exception):
    """The client disconnected before its body was complete."""


class RequestGuard:
    """The ASGI middleware of the module docstring.

    Args:
        app: The application inside.
        settings: Slot count, body caps and deadlines.
        gate: Checks bearer tokens.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings, gate: TokenGate) -> None:
        self.app = app
        self.gate = gate
        unauthenticated_timeout_s = min(UNAUTHENTICATED_BODY_TIMEOUT_S, settings.body_timeout_s)
        cap = settings.max_unauthenticated_body_bytes
        self._authenticated = _Lane(
            "in_flight", settings.max_body_bytes, settings.body_timeout_s, False
        )
        self._unauthenticated = _Lane("unauthenticated", cap, unauthenticated_timeout_s, True)
        self._bypass = _Lane(None, cap, unauthenticated_timeout_s, True)
        self._slots = _LoopBound(
            in_flight=settings.max_in_flight, unauthenticated=UNAUTHENTICATED_SLOTS
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization: bytes | None = None
        length: int | None = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = int(value) if value.isdigit() else None
                has_body = has_body or length != 0
            elif name == b"transfer-encoding":
                has_body = True
        path: str = scope["path"]
        if path in BYPASS_PATHS:
            lane = self._bypass
        else:
            api = path.startswith(API_PATH_PREFIX)
            principal: Principal | None = None
            if authorization is not None or api:
                header = authorization.decode("latin-1") if authorization is not None else None
                try:
                    principal = await self.gate.check(bearer_token(header))
                except Exception as e:  # refused from the headers: answered, body unread
                    if rule_for(e) is None:
                        raise
                    if api or not isinstance(e, Unauthenticated):
                        await _answer(e, scope, receive, send, close=has_body)
                        return
                    # A page with a bad header: it may still sign in by cookie.
            if principal is not None:
                scope[_PRINCIPAL_KEY] = principal
                lane = self._authenticated
            else:
                lane = self._unauthenticated
        if length is not None and length > lane.max_body_bytes:
            await _answer(PayloadTooLarge(lane.max_body_bytes), scope, receive, send, close=True)
            return
        if lane.slots is None:
            await self._enter(lane, has_body, scope, receive, send)
            return
        slots = self._slots[lane.slots]
        if not has_body or not lane.read_before_slot:
            async with slots:
                await self._enter(lane, has_body, scope, receive, send)
            return
        body = await self._read(lane, scope, receive, send)
        if body is not None:
            async with slots:
                await self.app(scope, _replay(body, receive), send)

    async def _enter(
        self, lane: _Lane, has_body: bool, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if not has_body:
            await self.app(scope, receive, send)
            return
        body = await self._read(lane, scope, receive, send)
        if body is not None:
            await self.app(scope, _replay(body, receive), send)

    async def _read(
        self, lane: _Lane, scope: Scope, receive: Receive, send: Send
    ) -> deque[Message] | None:
        """The body's messages, all of them; None when it was refused (answered here) or the
        client went away (recorded for the request log)."""
        try:
            return await _read_body(receive, lane.max_body_bytes, lane.body_timeout_s)
        except _Refused as refused:
            await _answer(refused.error, scope, receive, send, close=True)
        except _Gone:
            mark_client_gone(scope)
        return None


async def _read_body(receive: Receive, max_body_bytes: int, timeout_s: float) -> deque[Message]:
    """Every ``http.request`` message of the body, within ``timeout_s`` and the cap.

    Raises:
        _Refused: Over the cap (413) or past the deadline (408).
        _Gone: The client disconnected first.
    """
    messages: deque[Message] = deque()
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise _Gone()
                received += len(message.get("body", b""))
                if received > max_body_bytes:
                    raise _Refused(PayloadTooLarge(max_body_bytes))
                messages.append(message)
                if not message.get("more_body", False):
                    return messages
    except TimeoutError:
        raise _Refused(BodyTimeout(timeout_s)) from None


def _replay(messages: deque[Message], receive: Receive) -> Receive:
    """``receive`` for the app: the body read already, then the connection's own (which
    waits for the disconnect)."""

    async def replay() -> Message:
        if messages:
            return messages.popleft()
        return await receive()

    return replay


async def _answer(
    error: Exception, scope: Scope, receive: Receive, send: Send, *, close: bool
) -> None:
    """Answer ``error`` in the error table's shape; ``close``: the body was not read, so the
    connection cannot carry another request."""
    rule = rule_for(error)
    assert rule is not None, error
    response = error_response(error, rule)
    if close:
        response.headers.update(_CLOSE)
    await response(scope, receive, send)
