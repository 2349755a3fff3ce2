"""The emulator's images-per-window limit and its ``x-ratelimit-*`` headers.

``Emulator(images_per_minute=...)`` sets a sliding window: ``N`` images per
``per`` seconds (60 for an int). A valid images request is admitted when the
images already spent in the last ``per`` seconds plus its own ``n`` fit;
otherwise it is answered 429 ``rate_limit_exceeded`` with ``Retry-After`` and
``retry-after-ms`` saying when enough of the window frees up (a request larger
than the whole limit waits a whole window, and never passes). A request spends
its images when its body has been read and its parameters pass, before the
content policy looks at it. With a limit, every answer under ``/v1/`` or
``/openai/`` carries ``x-ratelimit-limit-images``,
``x-ratelimit-remaining-images`` and ``x-ratelimit-reset-images``
(:func:`format_duration`).

The admitted requests are recorded as ``arrivals``, ``(time, images)``; tests
read them, and :meth:`ImagesWindow.max_images_in_window` finds the busiest
window in them.
"""

from __future__ import annotations

import bisect
import collections
import math

from ._errors import refuse

__all__ = ["ImagesWindow", "Limit", "format_duration", "parse_rate"]


def format_duration(seconds: float) -> str:
    """A duration as the API's ``x-ratelimit-reset-*`` headers write it.

    ``0.02`` -> ``20ms``, ``1`` -> ``1s``, ``1.5`` -> ``1.5s``, ``360`` -> ``6m0s``,
    ``3725`` -> ``1h2m5s``.
    """
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    millis = math.ceil(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def parse_rate(value: object) -> Limit | None:
    """``(images, per_seconds)`` of an ``images_per_minute=`` argument; None for no limit.

    It takes None, an int (images per 60 s), an ``(images, per)`` pair, or
    anything with ``images`` and ``per`` (a :class:`asyncimg.RateLimit`).

    Raises:
        TypeError: ``value`` is none of those.
        ValueError: ``images`` < 1 or ``per`` <= 0.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        images, per = value, 60.0
    elif isinstance(value, tuple) and len(value) == 2:
        images, per = value
    elif hasattr(value, "images") and hasattr(value, "per"):
        images, per = value.images, value.per
    else:
        raise TypeError(
            "images_per_minute must be an int, an (images, per_seconds) pair or a RateLimit, "
            f"not {type(value).__name__}"
        )
    if not isinstance(images, int) or images < 1 or not float(per) > 0:
        raise ValueError(f"a rate limit needs images >= 1 and per > 0, not ({images}, {per})")
    return images, float(per)


Limit = tuple[int, float]
"""``(images, per_seconds)``: the emulator's ``rate_limit``."""


class ImagesWindow:
    """The sliding window of admitted images, and the record of every admission.

    Each call is given the emulator's ``limit`` as it is then, ``(images,
    per)`` or None (admit everything, send no headers); ``arrivals`` keeps the
    latest ``keep`` admissions or more (trimmed when it reaches twice that;
    None: all).
    """

    def __init__(self, keep: int | None) -> None:
        self.arrivals: list[tuple[float, int]] = []
        self._keep = keep
        self._window: collections.deque[tuple[float, int]] = collections.deque()

    def clear(self) -> None:
        """Forget the window and the arrivals."""
        self.arrivals.clear()
        self._window.clear()

    def headers(self, rate: Limit | None, now: float) -> dict[str, str]:
        """The ``x-ratelimit-*-images`` headers at ``now`` (none without a limit)."""
        if rate is None:
            return {}
        limit, per = rate
        window = self._window
        while window and window[0][0] <= now - per:
            window.popleft()
        used = sum(n for _t, n in window)
        reset = window[-1][0] + per - now if window else 0.0
        return {
            "x-ratelimit-limit-images": str(limit),
            "x-ratelimit-remaining-images": str(max(0, limit - used)),
            "x-ratelimit-reset-images": format_duration(reset),
        }

    def admit(self, rate: Limit | None, images: int, now: float) -> dict[str, str]:
        """Spend ``images`` from the window at ``now``; the rate headers after it.

        Raises:
            Refusal: they do not fit (429, with ``Retry-After`` and the headers).
        """
        headers = self.headers(rate, now)
        if rate is not None:
            limit, per = rate
            used = sum(n for _t, n in self._window)
            if used + images > limit:
                wait = per
                if images <= limit:
                    freed = 0
                    for t, n in self._window:
                        freed += n
                        if used - freed + images <= limit:
                            wait = t + per - now
                            break
                wait = max(wait, 0.001)
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
                refuse(
                    429,
                    f"Rate limit reached for images per min: Limit {limit}, Used {used}, "
                    f"Requested {images}. Please try again in {format_duration(wait)}.",
                    type_="requests",
                    code="rate_limit_exceeded",
                    headers=headers,
                )
            self._window.append((now, images))
        self.arrivals.append((now, images))
        if self._keep is not None and len(self.arrivals) >= 2 * self._keep:
            del self.arrivals[: -self._keep]
        return self.headers(rate, now)

    def max_images_in_window(self, rate: Limit | None, per: float | None = None) -> int:
        """The most images admitted in any window of ``per`` seconds (the limit's by default).

        A window is half-open, ``[t, t + per)``, as the limit counts.

        Raises:
            ValueError: ``per`` is not given and there is no limit.
        """
        if per is None:
            if rate is None:
                raise ValueError("give per= (no rate limit is configured)")
            per = rate[1]
        times = [t for t, _n in self.arrivals]
        counts = [n for _t, n in self.arrivals]
        order = sorted(range(len(times)), key=times.__getitem__)
        times = [times[i] for i in order]
        counts = [counts[i] for i in order]
        prefix = [0]
        for n in counts:
            prefix.append(prefix[-1] + n)
        best = 0
        for i, start in enumerate(times):
            end = bisect.bisect_left(times, start + per)
            best = max(best, prefix[end] - prefix[i])
        return best
