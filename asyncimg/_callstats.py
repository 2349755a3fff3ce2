"""What one call did, for whoever asked: its attempts, when each left, its 429s.

A call records into a :class:`CallStats` only when one is passed to it
(``stats=CallStats()``): ``generate_many`` fills its items' ``attempts`` from it,
the batch runner writes ``sent`` and ``rate_limited`` to its manifest. Nothing
travels through context variables: a reader following a call sees every hook.
"""

from __future__ import annotations

import attrs

__all__ = ["CallStats"]


@attrs.define
class CallStats:
    """What one call's attempts did, filled in by the client as the call runs.

    Pass one as ``stats=`` to ``generate``, ``edit`` or ``create_variation``
    and read it afterwards (or while the call runs, from another task).

    Attributes:
        sent: ``(time.time(), images)`` for each attempt, taken when its images
            were granted by the limiter and updated when the request is on the
            wire: the moment it left for the server.
        statuses: the error status of each failed attempt (None for a
            connection failure), in order.
        waited: seconds spent waiting for the rate limiter, over all attempts.
    """

    sent: list[tuple[float, int]] = attrs.field(factory=list)
    statuses: list[int | None] = attrs.field(factory=list)
    waited: float = 0.0

    @property
    def attempts(self) -> int:
        """Attempts sent so far (0: the call has not left yet)."""
        return len(self.sent)

    @property
    def rate_limited(self) -> int:
        """Attempts answered 429."""
        return self.statuses.count(429)
