"""RedisLimiter: one rate budget shared by every process and host that names it.

The semantics are those of :class:`asyncimg.Limiter` (a sliding window counted in
images at send time, strict FIFO, cancellation takes nothing, refunds come back at
once, a 429 pauses everyone, the server's ``x-ratelimit-*`` word caps grants), held
in Redis instead of in one process. Every step is one call of one Lua script
(``asyncimg/lua/limiter.lua``, loaded once, called by EVALSHA) that reads Redis's own
clock, so the hosts' clocks never matter.

Keys, all under ``{prefix}:{{name}}:`` (one hash tag, so one cluster slot), each with
a TTL renewed on every write and lapsing once everything in it has expired:
``st`` (counters), ``win`` (sent images and when they leave the window), ``held``
(granted, not yet sent), ``q`` and ``ql`` (the waiting queue and its leases), ``ep``,
``sub`` (the burst window of ``RateLimit(burst=...)``).
The channel ``{prefix}:{{name}}:wake`` carries the session id of a process whose
waiter has reached the head of the queue.

Round trips: new tickets go to Redis in batches, one call in flight at a time (an
acquire with room and nobody waiting is one round trip); stamps, refunds, pauses and
the latest ``x-ratelimit-*`` headers likewise, in a second stream of batches. So a
process keeps a few connections however many of its calls wait.

Waiting never polls: a process whose waiter heads the queue sleeps until the
earliest moment it can fit (an image leaving the window, a pause ending) and is
woken early through pub/sub when a refund, a send or another process's grant changes
that. Other processes sleep until told.

Crashes: while a process has waiters it renews their leases, and those of its
permits not yet stamped, every ``lease / 3`` seconds; a permit must be stamped or
refunded within ``lease`` seconds of its grant otherwise (the client does it at
once). A killed process's waiters leave the queue at most ``lease`` seconds after
its last renewal; its unstamped permits count as sent when their lease lapses (they
may have reached the server), so they come back ``per + margin`` later.

Redis down or slow: ``acquire`` raises :class:`LimiterUnavailableError` within
``timeout`` seconds (a waiter already queued: within ``lease / 3 + timeout``), having
sent nothing; or, with ``on_unavailable="local"``, it logs one warning and carries on
with a local :class:`~asyncimg.Limiter` at ``local_share`` of the rate, trying Redis
again after ``lease`` seconds. Redis restarted or some keys evicted (its state lost):
the script finds it when the counters and the sets disagree or a process stamps or
renews a permit the budget no longer knows, starts afresh and pauses everyone for one
window; waiters re-join the queue in their order. A Redis whose ``maxmemory-policy``
evicts any key (``allkeys-*``) is refused on the first call; ``volatile-*``, or a
``CONFIG GET`` refused, is logged as a warning.

Background tasks: the submitter, the settler, the pump and the listener belong to one
owner (:class:`~asyncimg._background.BackgroundTasks`, whose docstring says why it is
not a task group entered by the caller). A task that fails stops the others; the
waiters get a :class:`LimiterUnavailableError` caused by the failure, which is logged,
and the tasks start afresh when next needed. :meth:`RedisLimiter.aclose` stops them
all. A loop that ends without ``aclose()`` is a crash that tidies up: the tasks end
with the loop, the connections :meth:`RedisLimiter.from_url` opened are closed, what
was not yet told to Redis lapses with its leases, and the limiter may serve a later
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio
import attrs

from ._background import BackgroundTasks, first_error
from ._exceptions import LimiterUnavailableError, ValidationError
from ._limiter import Limiter, LimiterStats, Permit, RateLimit, RatePermit
from ._ratelimit_headers import read_ratelimit_headers

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

__all__ = ["RedisLimiter", "RedisPermit", "check_name"]

logger = logging.getLogger("asyncimg")

_SCRIPT = importlib.resources.files("asyncimg").joinpath("lua/limiter.lua").read_text("utf-8")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

_HELD = 0
_STAMPED = 1
_REFUNDED = 2


def check_name(name: str) -> None:
    """Check a shared budget's name: 1-100 letters, digits, ``.``, ``_``, ``-``.

    It goes into Redis keys, so it must not be an API key (``sk-...``).

    Raises:
        ValueError: the name is not acceptable (the message does not repeat it).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("the name must be 1-100 letters, digits, '.', '_' or '-'")
    if name.startswith("sk-"):
        raise ValueError("the name looks like an API key; it is written into Redis keys")


def _stopped(exc: BaseException) -> LimiterUnavailableError:
    """What the waiters get when a background task stops for ``exc`` (cancelled or failed)."""
    cause = first_error(exc)
    if isinstance(cause, asyncio.CancelledError):
        error = LimiterUnavailableError("the shared limiter's background tasks stopped")
    else:
        error = LimiterUnavailableError(
            "the shared limiter's background task failed: "
            f"{type(cause).__name__}: {str(cause)[:200]}"
        )
    error.__cause__ = cause
    return error


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def _burst(rate: RateLimit) -> tuple[int, int]:
    """The burst window as the script takes it: (images, ms), (0, 0) for none."""
    if rate.burst is None or rate.burst >= rate.images:
        return 0, 0
    return rate.burst, _ms(rate.window * rate.burst / rate.images)


async def _close_pubsub(pubsub: PubSub) -> None:
    """Close a pub/sub connection with ``PubSub.aclose`` (redis-py 5.0.1 and newer).

    redis-py annotates ``aclose`` from 8.0 on; called through a typed name it passes
    ``mypy --strict`` against 5.x-7.x too, with no ``type: ignore`` to go stale.
    """
    aclose: Callable[[], Awaitable[object]] = pubsub.aclose
    await aclose()


@attrs.frozen
class _Reply:
    granted: tuple[str, ...]
    wait: float | None  # seconds the head must wait; None: until told
    mine: int  # 1: the head is ours and fits; 2: ours, not yet; 0: not ours
    state: tuple[int, ...]
    lost: bool = False  # this call found the state lost (evicted, restarted): paused

    @classmethod
    def from_redis(cls, raw: Any) -> _Reply:
        granted, wait, mine, lost, state = raw
        return cls(
            tuple(g.decode() if isinstance(g, bytes) else str(g) for g in granted),
            None if int(wait) < 0 else int(wait) / 1000,
            int(mine),
            tuple(int(v) for v in state),
            bool(int(lost)),
        )


_SAFE_POLICIES = frozenset({"noeviction"})


def eviction_problem(policy: str) -> str | None:
    """What is wrong with a Redis ``maxmemory-policy`` for the limiter (None: nothing).

    ``allkeys-*`` may evict the limiter's keys at any time (a budget granted again,
    silently); ``volatile-*`` may too, since every key of the limiter has a TTL.
    """
    if policy in _SAFE_POLICIES:
        return None
    return (f"Redis's maxmemory-policy is {policy}: under memory pressure it evicts the "
            "limiter's keys and the budget is granted again; set maxmemory-policy "
            "noeviction (or give the limiter a Redis of its own)")


class RedisPermit:
    """A permit of a :class:`RedisLimiter`: :meth:`stamp` when sending, else :meth:`refund`.

    Both return at once; the limiter tells Redis in the background.
    """

    __slots__ = ("_limiter", "_state", "images", "ticket")

    def __init__(self, limiter: RedisLimiter, ticket: str, images: int) -> None:
        self._limiter = limiter
        self.ticket = ticket
        self.images = images
        self._state = _HELD

    def stamp(self) -> None:
        """The request is being sent now: its window starts. Idempotent.

        Raises:
            RuntimeError: the permit was already refunded.
        """
        if self._state == _HELD:
            self._state = _STAMPED
            self._limiter._settle("s", self.ticket)
        elif self._state == _REFUNDED:
            raise RuntimeError("a refunded permit cannot be stamped")

    def refund(self) -> None:
        """Nothing was sent: give the images back at once. No-op once stamped or refunded."""
        if self._state == _HELD:
            self._state = _REFUNDED
            self._limiter._settle("r", self.ticket)

    def __repr__(self) -> str:
        state = ("held", "stamped", "refunded")[self._state]
        return f"<RedisPermit images={self.images} {state}>"


class RedisLimiter:
    """A FIFO sliding-window limiter shared through Redis (see the module docstring).

    Args:
        redis: a ``redis.asyncio.Redis`` or ``RedisCluster`` the caller owns (and closes).
        rate: the budget (``burst`` included); every process sharing ``name``
            must give the same one.
        name: which budget this is: one per organization (or project) and model
            family, e.g. ``"org-acme-images"``. Letters, digits, ``.``, ``_``, ``-``;
            it is written into Redis keys, so never put a secret (an API key) in it.
        prefix: the first part of every key and channel.
        lease: seconds a crashed process can hold its waiters and permits before
            the others reclaim them; renewed every ``lease / 3``.
        timeout: seconds one Redis call may take before the limiter is
            unavailable.
        on_unavailable: ``"raise"`` (:class:`LimiterUnavailableError`) or
            ``"local"``: fall back to a local limiter at ``local_share`` of the rate.
        local_share: the share of ``rate.images`` this process may use alone, in
            (0, 1]; required with ``on_unavailable="local"``, typically 1 / the
            number of processes.

    Raises:
        ValueError: an argument is out of range.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        rate: RateLimit,
        name: str,
        prefix: str = "asyncimg",
        lease: float = 10.0,
        timeout: float = 2.0,
        on_unavailable: Literal["raise", "local"] = "raise",
        local_share: float | None = None,
    ) -> None:
        if not isinstance(rate, RateLimit):
            raise ValueError(f"rate must be a RateLimit, not {rate!r}")
        check_name(name)
        if not _NAME.fullmatch(prefix):
            raise ValueError(f"prefix must be letters, digits, '.', '_' or '-', not {prefix!r}")
        for label, value in (("lease", lease), ("timeout", timeout)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{label} must be a number of seconds > 0, not {value!r}")
        if on_unavailable not in ("raise", "local"):
            raise ValueError(f"on_unavailable must be 'raise' or 'local', not {on_unavailable!r}")
        if on_unavailable == "local" and (local_share is None or not 0 < local_share <= 1):
            raise ValueError("on_unavailable='local' needs local_share in (0, 1]")
        self.rate = rate
        self.name = name
        self.lease = float(lease)
        self.timeout = float(timeout)
        self.on_unavailable = on_unavailable
        self.local_share = local_share
        #: Redis round trips made so far (script calls; pub/sub not counted).
        self.round_trips = 0
        self._redis = redis
        self._owns = False
        base = f"{prefix}:{{{name}}}:"
        self._keys = [base + k for k in ("st", "win", "held", "q", "ql", "ep", "sub")]
        self._channel = base + "wake"
        self._sid = secrets.token_hex(8)
        self._fixed: list[str | int] = [
            self._sid,
            rate.images,
            _ms(rate.window),
            _ms(rate.per),
            _ms(self.lease),
            *_burst(rate),
            self._channel,
        ]
        self._script: AsyncScript = redis.register_script(_SCRIPT)
        self._seq = 0
        self._waiters: dict[str, tuple[asyncio.Future[RedisPermit], int]] = {}
        self._held: set[str] = set()
        self._submit: list[tuple[str, int, asyncio.Future[RedisPermit]]] = []
        self._pending: list[str] = []  # settlements not sent yet
        self._told = 0  # settlements queued, ever
        self._landed = 0  # settlements whose call has finished, ever
        self._landing = asyncio.Event()  # set (and replaced) as each call finishes
        self._pause_pending = False
        self._acquiring = 0  # acquire calls of this process not yet returned
        self._busy_since = 0.0
        self._waited = 0.0
        # The submitter, the settler, the pump and the listener.
        self._tasks = BackgroundTasks(
            f"asyncimg RedisLimiter {name}",
            on_failure=self._background_failed,
            on_loop_end=self._loop_ended,
        )
        self._wake = asyncio.Event()  # an asyncio.Event binds to a loop on first use
        self._subscribed = asyncio.Event()
        self._local: Limiter | None = None
        self._local_permits: list[Permit] = []  # granted by the fallback, not yet reported
        self._local_until = -math.inf
        self._warned = False
        self._snapshot: tuple[float, tuple[int, ...]] | None = None
        self._closed = False
        self._policy_checked = False

    @classmethod
    def from_url(cls, url: str, *, rate: RateLimit, name: str, **kwargs: Any) -> RedisLimiter:
        """Connect to ``url`` (``redis://host:6379/0``, ``rediss://``, ``unix://``; a Redis
        Cluster as ``redis+cluster://node:7000`` or ``rediss+cluster://``, any node).

        Takes the keyword arguments of the constructor; :meth:`aclose` closes the
        connection pool it opens. Connecting happens on first use.

        Raises:
            ValueError: an argument is out of range, or the URL is not a Redis URL.
        """
        try:
            from redis.asyncio import Redis, RedisCluster
        except ImportError as exc:
            raise ImportError(
                "RedisLimiter needs redis-py: pip install 'asyncimg[redis]'"
            ) from exc
        timeout = kwargs.get("timeout", 2.0)
        client: Redis | RedisCluster
        scheme, sep, rest = url.partition("://")
        if sep and scheme in ("redis+cluster", "rediss+cluster"):
            client = RedisCluster.from_url(
                f"{scheme.removesuffix('+cluster')}://{rest}",
                socket_timeout=timeout, socket_connect_timeout=timeout,
            )
        else:
            client = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        limiter = cls(client, rate=rate, name=name, **kwargs)
        limiter._owns = True
        return limiter

    def __repr__(self) -> str:
        return f"<RedisLimiter name={self.name!r} rate={self.rate!r} waiting={len(self._waiters)}>"

    # -- the limiter protocol --

    async def acquire(self, images: int) -> RatePermit:
        """Wait for a permit for ``images`` images, in strict order of arrival across
        every process sharing the budget. Cancelling takes nothing.

        Raises:
            ValidationError: ``images`` is not an integer >= 1, or exceeds the
                whole budget (``param`` is ``"n"``).
            LimiterUnavailableError: Redis did not answer in time (nothing was sent).
        """
        n = images
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValidationError("n", f"the number of images must be an integer >= 1, not {n!r}")
        if n > self.rate.images:
            raise ValidationError(
                "n",
                f"n={n} exceeds the rate limit of {self.rate.images} images per "
                f"{self.rate.per:g}s; it could never be sent",
            )
        if self._closed:
            raise LimiterUnavailableError("the limiter is closed")
        if self._local is not None and time.monotonic() < self._local_until:
            return await self._local_acquire(n)
        try:
            if self._local_permits:
                await self._report_local()
            return await self._acquire_shared(n)
        except LimiterUnavailableError:
            if self.on_unavailable != "local":
                raise
            self._fall_back()
            return await self._local_acquire(n)

    async def _local_acquire(self, n: int) -> RatePermit:
        """A permit of the local fallback, kept so that Redis hears of it when it returns."""
        assert self._local is not None
        permit = await self._local.acquire(n)
        self._local_permits.append(permit)
        return permit

    async def _report_local(self) -> None:
        """Redis is back: the images sent under the local fallback that are still in the
        window count in the shared one (``l:`` settlements, landed before any grant)."""
        now = time.monotonic()
        kept: list[Permit] = []
        for permit in self._local_permits:
            if permit.stamped_at is None:
                if not permit.refunded:
                    kept.append(permit)  # still held: reported once it is sent
                continue
            ago = now - permit.stamped_at
            if ago < self.rate.window:
                self._seq += 1
                self._tell(f"l:{_ms(ago)}:{self._sid}:{self._seq}:{permit.images}")
        self._local_permits = kept
        await self._flushed()

    def pause(self, seconds: float) -> None:
        """Grant nothing to anyone, in any process, until ``seconds`` from now.

        Returns at once; this process's next ``acquire`` waits until Redis has it.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a pause must be a finite number of seconds >= 0, not {seconds!r}")
        if self._local is not None:
            self._local.pause(seconds)
        self._pause_pending = True
        self._tell(f"p:{_ms(seconds)}")

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Share what ``x-ratelimit-*`` response headers say with every process.

        Returns at once; it travels with this process's next settlement (only the
        latest headers, if several arrive meanwhile).
        """
        if self._local is not None:
            self._local.observe_headers(headers)
        word = read_ratelimit_headers(headers)
        if word is None:
            return
        limit = -1 if word.limit is None else word.limit
        item = f"o:{word.remaining}:{_ms(word.reset)}:{int(word.images)}:{limit}"
        for i, pending in enumerate(self._pending):
            if pending[0] == "o":  # older news, not sent yet
                self._pending[i] = item
                return
        self._tell(item)

    def stats(self) -> LimiterStats:
        """The shared window as of this process's last Redis round trip (at most
        ``lease / 3`` seconds old while it waits; see :meth:`fetch_stats`); ``waited``
        is this process's: seconds during which one of its acquires was under way.

        While on the local fallback, the local limiter's stats.
        """
        if self._local is not None and time.monotonic() < self._local_until:
            return self._local.stats()
        if self._snapshot is None:
            nothing = (0, 0, 0, 0, 0, 0, 0, self.rate.images, 0, 0, -1, -1, -1, 0)
            return self._stats(0.0, nothing)
        at, state = self._snapshot
        return self._stats(time.monotonic() - at, state)

    # -- beyond the protocol --

    async def fetch_stats(self) -> LimiterStats:
        """The shared window now, after what this process has told Redis has landed.

        Raises:
            LimiterUnavailableError: Redis did not answer in time.
        """
        self._tasks.open()  # so that the loop's end closes the connection this opens
        await self._flushed()
        await self._call("stats")
        return self.stats()

    async def aclose(self) -> None:
        """Let stamps and refunds land (within ``timeout``), fail the waiters, stop the
        background tasks, and close what :meth:`from_url` opened."""
        self._closed = True
        closed = LimiterUnavailableError("the limiter was closed")
        for _ticket, _n, future in self._submit:  # not sent: nothing to give back
            if not future.done():
                future.set_exception(closed)
        self._submit.clear()
        await self._tasks.wait("submitter", self.timeout)  # its batch comes back, to give back
        for ticket, (future, _n) in self._waiters.items():
            self._settle("r", ticket)  # leave the queue now, not when the lease lapses
            if not future.done():
                future.set_exception(closed)
        self._waiters.clear()
        await self._flushed()
        await self._tasks.aclose()
        if self._owns:
            await self._redis.aclose()

    async def __aenter__(self) -> RedisLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the machinery --

    async def _check_policy(self) -> None:
        """Refuse a Redis that may evict any key (``allkeys-*``); warn of one that may evict
        keys with a TTL (``volatile-*``), or that will not say (``CONFIG`` refused)."""
        from redis.exceptions import ResponseError

        try:
            config = await self._redis.config_get("maxmemory*")
        except ResponseError as exc:
            logger.warning(
                "asyncimg shared limiter %r: cannot read Redis's maxmemory-policy (%s); if it "
                "evicts keys (allkeys-*, volatile-*), the budget can be granted again: use "
                "noeviction", self.name, exc)
            self._policy_checked = True
            return
        policy = str(config.get("maxmemory-policy", "noeviction"))
        problem = eviction_problem(policy)
        if problem is not None and str(config.get("maxmemory", "0")) != "0":
            if policy.startswith("allkeys-"):
                raise LimiterUnavailableError(f"the shared limiter refuses this Redis: {problem}")
            logger.warning("asyncimg shared limiter %r: %s", self.name, problem)
        self._policy_checked = True

    async def _call(self, op: str, *args: Any) -> _Reply:
        try:
            if not self._policy_checked:
                await asyncio.wait_for(self._check_policy(), self.timeout)
            raw = await asyncio.wait_for(
                self._script(keys=self._keys, args=[op, *self._fixed, "", *args]),
                self.timeout,
            )
        except asyncio.TimeoutError as exc:
            raise LimiterUnavailableError(
                f"the shared limiter's Redis did not answer within {self.timeout:g}s"
            ) from exc
        except Exception as exc:
            from redis.exceptions import MovedError, RedisError, ResponseError

            if isinstance(exc, ResponseError) and str(exc).startswith("asyncimg limiter: "):
                raise LimiterUnavailableError(str(exc)) from exc  # the script's own refusal
            if isinstance(exc, MovedError):
                raise LimiterUnavailableError(
                    f"the shared limiter's Redis is a cluster node ({exc}): connect to the "
                    "cluster (RedisLimiter.from_url('redis+cluster://host:port'), or pass a "
                    "redis.asyncio.RedisCluster)"
                ) from exc
            if isinstance(exc, (RedisError, OSError)):
                raise LimiterUnavailableError(
                    f"the shared limiter's Redis failed: {type(exc).__name__}: {str(exc)[:200]}"
                ) from exc
            raise
        self.round_trips += 1
        reply = _Reply.from_redis(raw)
        if reply.lost:
            logger.warning(
                "asyncimg shared limiter %r: its state in Redis was lost (keys evicted, or "
                "Redis restarted without its data); every process pauses for one window",
                self.name)
        state = reply.state
        if state[-1] < 0 and self._snapshot is not None:  # only some calls count it
            state = (*state[:-1], self._snapshot[1][-1])
        self._snapshot = (time.monotonic(), state)
        return reply

    async def _acquire_shared(self, n: int) -> RedisPermit:
        if not self._acquiring:
            self._busy_since = time.monotonic()
        self._acquiring += 1
        try:
            return await self._acquire_ticket(n)
        finally:
            self._acquiring -= 1
            if not self._acquiring:
                self._waited += time.monotonic() - self._busy_since

    async def _acquire_ticket(self, n: int) -> RedisPermit:
        if self._pause_pending:  # a 429 of ours: let Redis hear of it first
            await self._flushed()
        self._seq += 1
        ticket = f"{self._sid}:{self._seq}:{n}"
        future: asyncio.Future[RedisPermit] = asyncio.get_running_loop().create_future()
        if not self._tasks.start("submitter", self._submitter):
            raise LimiterUnavailableError("the limiter's event loop is shutting down")
        self._submit.append((ticket, n, future))
        try:
            return await future
        except asyncio.CancelledError:
            if future.cancelled():
                self._abandon(ticket)
            elif future.exception() is None:
                future.result().refund()
            raise

    def _abandon(self, ticket: str) -> None:
        """A waiter was cancelled: its ticket takes nothing and leaves the queue."""
        for i, (pending, _n, _f) in enumerate(self._submit):
            if pending == ticket:  # not sent yet
                del self._submit[i]
                return
        if self._waiters.pop(ticket, None) is not None:
            self._settle("r", ticket)
        # else on its way in a batch: the submitter gives it back when the reply comes

    async def _submitter(self) -> None:
        """Send new tickets, as many as have arrived, in one call at a time."""
        while self._submit:
            batch, self._submit = self._submit, []
            try:
                reply = await self._call("acquire", *(ticket for ticket, _n, _f in batch))
            except LimiterUnavailableError as exc:
                self._give_back(batch, exc)
                continue
            except BaseException as exc:  # stopped, or failed: the owner tells the rest
                self._give_back(batch, _stopped(exc))
                raise
            granted = set(reply.granted)
            queued = False
            for ticket, n, future in batch:
                if self._closed:
                    self._settle("r", ticket)
                    if not future.done():
                        future.set_exception(LimiterUnavailableError("the limiter was closed"))
                elif ticket in granted:
                    permit = self._permit(ticket, n)
                    if future.done():  # cancelled meanwhile
                        permit.refund()
                    else:
                        future.set_result(permit)
                elif future.done():
                    self._settle("r", ticket)
                else:
                    self._waiters[ticket] = (future, n)
                    queued = True
            if queued:
                self._start_pump(wake=reply.mine != 0)

    def _give_back(
        self,
        batch: list[tuple[str, int, asyncio.Future[RedisPermit]]],
        error: LimiterUnavailableError,
    ) -> None:
        """A batch of tickets went unanswered: they may have reached Redis, so they leave
        its queue, and their waiters get ``error``."""
        for ticket, _n, future in batch:
            self._settle("r", ticket)
            if not future.done():
                future.set_exception(error)

    def _permit(self, ticket: str, n: int) -> RedisPermit:
        self._held.add(ticket)
        return RedisPermit(self, ticket, n)

    def _settle(self, kind: str, ticket: str) -> None:
        """Tell Redis a ticket was sent (``s``) or gives back what it holds (``r``)."""
        self._held.discard(ticket)
        self._tell(f"{kind}:{ticket}")

    def _tell(self, item: str) -> None:
        self._pending.append(item)
        self._told += 1
        self._tasks.start("settler", self._settler)

    async def _settler(self) -> None:
        """Send stamps, refunds, pauses and headers, all that have piled up, in one call
        at a time."""
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                reply = await self._call("settle", *batch)
            except LimiterUnavailableError as exc:
                if not self._warned:
                    self._warned = True
                    logger.warning("asyncimg shared limiter %r: %s", self.name, exc)
                continue
            finally:
                self._pause_pending = any(item[0] == "p" for item in self._pending)
                self._landed += len(batch)
                self._landing.set()
                self._landing = asyncio.Event()
            self._warned = False
            if reply.mine and self._waiters:  # our head fits, or has a new time to wait
                self._start_pump(wake=True)

    async def _flushed(self) -> None:
        """Wait (at most ``timeout``) until what was told so far has been sent."""
        target = self._told
        deadline = time.monotonic() + self.timeout
        while self._landed < target and self._tasks.running("settler"):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._landing.wait(), left)

    def _fall_back(self) -> Limiter:
        if self._local is None:
            share = self.local_share or 1.0
            images = max(1, math.floor(self.rate.images * share))
            self._local = Limiter(RateLimit(images, self.rate.per, self.rate.margin))
        if not self._warned:
            self._warned = True
            logger.warning(
                "asyncimg shared limiter %r: Redis unavailable; continuing alone on a local "
                "limit of %s for %gs at a time",
                self.name, self._local.rate, self.lease,
            )
        self._local_until = time.monotonic() + self.lease
        return self._local

    def _start_pump(self, *, wake: bool) -> None:
        self._tasks.start("listener", self._listen)
        if self._tasks.running("pump"):
            if wake:
                self._wake.set()
        else:
            self._tasks.start("pump", self._pump)

    async def _listen(self) -> None:
        """Hold a pub/sub subscription; a message naming this session wakes the pump."""
        sid = self._sid.encode()
        beat = self.lease / 3
        pubsub: PubSub | None = None
        try:
            while True:
                try:
                    if pubsub is None:
                        pubsub = self._redis.pubsub()
                        await asyncio.wait_for(pubsub.subscribe(self._channel), self.timeout)
                        self._subscribed.set()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=beat)
                except Exception as exc:
                    from redis.exceptions import NoPermissionError, RedisError

                    if isinstance(exc, NoPermissionError):
                        raise LimiterUnavailableError(
                            f"the Redis user may not subscribe to {self._channel} ({exc}): "
                            f"it needs the ACL rule &{self._channel} "
                            "(see the rate-limit guide in docs/)"
                        ) from exc
                    if not isinstance(exc, (RedisError, OSError, asyncio.TimeoutError)):
                        raise
                    if pubsub is not None:
                        await self._unsubscribe(pubsub)
                        pubsub = None
                    self._subscribed.set()  # do not hold the pump; its beat polls
                    self._wake.set()
                    await asyncio.sleep(min(beat, 0.5))
                    continue
                if message is not None:
                    data = message.get("data")
                    if data == sid or data == self._sid:
                        self._wake.set()
        finally:
            self._subscribed.clear()
            if pubsub is not None:
                await self._unsubscribe(pubsub)

    async def _unsubscribe(self, pubsub: PubSub) -> None:
        """Close a subscription (at most ``timeout`` seconds), even while cancelled."""
        with anyio.move_on_after(self.timeout, shield=True), contextlib.suppress(Exception):
            await _close_pubsub(pubsub)

    async def _pump(self) -> None:
        """While this process has waiters: take what reaches the head, renew leases, sleep."""
        beat = self.lease / 3
        # A grant published before we listened would be lost: listen, then look.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), self.timeout)
        while self._waiters:
            self._wake.clear()
            held = list(self._held)
            asked = list(self._waiters)
            try:
                reply = await self._call("take", len(held), *held, *asked)
            except LimiterUnavailableError as exc:
                self._fail_waiters(exc)  # granted, maybe, the reply lost: take nothing
                return
            for ticket in reply.granted:
                waiter = self._waiters.pop(ticket, None)
                if waiter is not None and not waiter[0].done():
                    waiter[0].set_result(self._permit(ticket, waiter[1]))
                else:
                    self._settle("r", ticket)
            for ticket in set(asked) - set(reply.granted) - self._waiters.keys():
                self._settle("r", ticket)  # cancelled meanwhile: leave the queue
            if reply.mine == 1:
                continue
            delay = beat
            if reply.mine == 2 and reply.wait is not None:
                delay = min(delay, reply.wait)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _fail_waiters(self, error: LimiterUnavailableError) -> None:
        """Every queued waiter of this process leaves Redis's queue and gets ``error``."""
        for ticket, (future, _n) in self._waiters.items():
            self._settle("r", ticket)
            if not future.done():
                future.set_exception(error)
        self._waiters.clear()

    def _background_failed(self, exc: Exception) -> None:
        """A background task raised and the others have stopped: log it, and fail the
        waiters in Redis's queue. Tickets not sent yet go with a new submitter; the
        other tasks start again when next needed."""
        error = _stopped(exc)
        logger.error("asyncimg shared limiter %r: %s", self.name, error, exc_info=exc)
        self._fail_waiters(error)
        if self._submit:
            self._tasks.start("submitter", self._submitter)

    async def _loop_ended(self) -> None:
        """The loop is ending without :meth:`aclose`: close what :meth:`from_url` opened,
        and leave nothing bound to this loop."""
        self._wake = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._landing.set()
        self._landing = asyncio.Event()
        if self._owns:
            with anyio.move_on_after(self.timeout), contextlib.suppress(Exception):
                await self._redis.aclose()

    def _stats(self, elapsed: float, state: tuple[int, ...]) -> LimiterStats:
        (granted, refunded, sent, waiting, waiting_images, held, in_window, available,
         pauses, paused_ms, allow, reset_ms, server_limit, last) = state
        per_minute = last * 60.0 / self.rate.per if last >= 0 else None
        return LimiterStats(
            granted=granted,
            refunded=refunded,
            sent=sent,
            waiting=waiting,
            waiting_images=waiting_images,
            held=held,
            in_window=in_window,
            in_use=held + in_window,
            available=available,
            pauses=pauses,
            paused_for=max(0.0, paused_ms / 1000 - elapsed),
            server_remaining=None if allow < 0 else allow,
            server_reset_in=None if allow < 0 else reset_ms / 1000 - elapsed,
            server_limit=None if server_limit < 0 else server_limit,
            images_last_window=max(0, last),
            images_per_minute=per_minute,
            waited=self._waited + (time.monotonic() - self._busy_since if self._acquiring else 0.0),
        )
