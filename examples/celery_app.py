"""Celery workers calling asyncimg under one global rate: a recipe.

Celery's own ``rate_limit="50/m"`` is per worker process, so N processes send N
times the rate and the API answers the excess with 429s. Here every worker
process builds one blocking client in ``worker_process_init`` whose limiter is a
``RedisLimiter`` shared by name (:func:`asyncimg.shared_images_client`): all
processes on all machines keep one rate together.

Run a worker (prefork, the default pool) and send tasks::

    export CELERY_BROKER_URL=redis://127.0.0.1:6379/0 OPENAI_API_KEY=sk-...
    celery -A celery_app worker --concurrency 8          # on each machine
    python -c 'from celery_app import generate_image; generate_image.delay("a lantern", "lantern")'

Settings (environment): ``CELERY_BROKER_URL``; ``ASYNCIMG_REDIS_URL`` (the shared
budget; default: the broker); ``ASYNCIMG_RATE`` (``50/min``, ``10/2s``...: your
tier's images per window); ``ASYNCIMG_LIMIT_NAME`` (one name per organization and
model family); ``ASYNCIMG_OUTPUT`` (where images go, default ``out``; a task's
``directory`` argument overrides it); ``ASYNCIMG_MAX_RETRIES`` (the client's own
retries before the task's); ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` as usual.

Delivery: ``acks_late`` with ``reject_on_worker_lost`` is at least once: a task
whose worker process dies is delivered again (a whole worker killed: after the
broker's ``visibility_timeout``), so a task skips the images it already saved
(``{name}-0.png``...) rather than paying for them twice. What asyncimg says is
worth retrying (429, 5xx, connection errors, once the client's own retries ran
out) is retried by Celery after the server's ``Retry-After``
(:func:`asyncimg.retry_countdown`); anything else (a refused prompt, a bad key)
fails the task at once.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init, worker_process_shutdown

import asyncimg
from asyncimg.cli import parse_rate

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("celery_app", broker=BROKER)
app.conf.update(
    task_acks_late=True,  # acknowledged when done, not when received
    task_reject_on_worker_lost=True,  # a process killed mid-task: the task goes back
    worker_prefetch_multiplier=1,  # a process holds one task at a time
    task_ignore_result=True,  # the images on disk are the result
    broker_connection_retry_on_startup=True,
)

_client: asyncimg.ImagesClient | None = None


def _build_client() -> asyncimg.ImagesClient:
    rate = parse_rate(os.environ.get("ASYNCIMG_RATE", "50/min"))
    if rate is None:
        raise ValueError("ASYNCIMG_RATE: a shared budget needs a rate (not off)")
    return asyncimg.shared_images_client(
        os.environ.get("ASYNCIMG_REDIS_URL", BROKER),
        rate=rate,
        name=os.environ.get("ASYNCIMG_LIMIT_NAME", "images"),
        max_retries=int(os.environ.get("ASYNCIMG_MAX_RETRIES", "2")),
    )


@worker_process_init.connect
def _start_client(**_: Any) -> None:
    """One client per worker process, made after the fork (a thread and sockets of its own)."""
    global _client
    _client = _build_client()


@worker_process_shutdown.connect
def _close_client(**_: Any) -> None:
    global _client
    if _client is not None:
        _client.close()
        _client = None


def client() -> asyncimg.ImagesClient:
    """This process's client (made on first use outside a worker: ``task.apply()``)."""
    global _client
    if _client is None:
        _client = _build_client()
    return _client


@app.task(bind=True, name="images.generate", max_retries=10)
def generate_image(
    self: Task, prompt: str, name: str, directory: str | None = None, **params: Any
) -> list[str]:
    """Generate ``prompt`` into ``directory`` as ``{name}-{i}.{ext}``; returns the paths."""
    folder = Path(directory or os.environ.get("ASYNCIMG_OUTPUT", "out"))
    pattern = os.path.join(glob.escape(str(folder)), glob.escape(name) + "-[0-9]*.*")
    saved = sorted(glob.glob(pattern))
    if saved:  # delivered again after its images were written: nothing to pay for
        return saved
    try:
        response = client().generate(prompt, **params)
    except asyncimg.APIError as exc:
        countdown = asyncimg.retry_countdown(exc, self.request.retries, now=time.time())
        if countdown is None:
            raise
        raise self.retry(exc=exc, countdown=countdown) from exc
    return [str(p) for p in client().save(response, folder, stem=name, overwrite=True)]
