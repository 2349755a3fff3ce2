"""``asyncimg batch --via batch-api``: the batch runner's route through OpenAI's Batch API.

The same input, output directory and manifest as the direct route (``_runner.py``):
the same item ids (a line's ``custom_id`` is its manifest id), images written
atomically as ``{id}-{i}.{ext}`` before the item's fsynced manifest line.

What is in flight is recorded in ``DIR/batchapi.json`` (written atomically)
before each step can have an effect, so a process killed at any point resumes
and never makes a second batch of the same items:

1. ``planned``: the input file's SHA-256 is recorded before it is uploaded. A
   rerun that finds no file id looks for the uploaded file by its name
   (``asyncimg-{sha}.jsonl``) before uploading again.
2. ``uploaded``: the file id is recorded before the batch is created. A rerun
   that finds no batch id looks for a batch made from that file before creating.
3. ``created``: the batch id is recorded; a rerun goes on polling it.
4. ``collected``: every line of its results has a manifest line. A rerun of a
   batch killed while writing results reads them again and writes what is missing.

When no batch is live, a run sends what the manifest does not hold as done (the
failed items too, with ``retry_failed``) as new batches of at most 50,000 lines
or 200 MB each.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from .._callstats import CallStats
from .._cost import PriceTable, cost_of, load_prices
from .._exceptions import (
    APIError,
    APIResponseValidationError,
    APIStatusError,
    AsyncImgError,
    NotFoundError,
    ValidationError,
)
from .._offloop import blocking
from .._params import GenerateParams
from .api import (
    BatchAPIJob,
    BatchAPIResult,
    BatchAPIState,
    batch_api_line,
    create,
    file_lines,
    find_batch,
    split_batch_lines,
    upload,
    window_seconds,
)
from .control import BatchControl, fatal_error
from .input import Entry, TextLines, read_entries
from .manifest import Manifest, Record, error_fields, usage_fields
from .runner import (
    BatchSummary,
    ProgressSink,
    append_run_line,
    check_batch_params,
    public_url,
)

if TYPE_CHECKING:
    from .._client import AsyncImagesClient

__all__ = [
    "STATE_NAME",
    "JobState",
    "RouteState",
    "batches_status",
    "cancel_batches",
    "run_via_batch_api",
]

logger = logging.getLogger("asyncimg")

STATE_NAME: Final = "batchapi.json"
_NOT_SENT = frozenset({"timeout", "max_retries"})
_READS: Final = 3
"""How often a batch's result files are read while they hold fewer lines than its counts."""


def _short(exc: APIError) -> str:
    status = getattr(exc, "status_code", None)
    return f"{status}" if status is not None else type(exc).__name__


@attrs.define
class JobState:
    """One batch of the Batch API route, as far as it got (see the module docstring)."""

    sha256: str
    lines: int
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None
    collected: bool = False

    @property
    def filename(self) -> str:
        """The name the input file is uploaded under (how a rerun finds it)."""
        return f"asyncimg-{self.sha256[:32]}.jsonl"

    def to_json(self) -> dict[str, Any]:
        """The record of this job in ``batchapi.json``."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> JobState:
        """Read one job of ``batchapi.json``.

        Raises:
            ValueError: the record is not a job.
        """
        try:
            return cls(
                sha256=str(obj["sha256"]), lines=int(obj["lines"]),
                file_id=obj.get("file_id"), batch_id=obj.get("batch_id"),
                status=obj.get("status"), collected=bool(obj.get("collected")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a batch job record: {exc}") from None


@attrs.define
class RouteState:
    """``DIR/batchapi.json``: the jobs of the Batch API route in one directory."""

    path: Path
    jobs: list[JobState] = attrs.field(factory=list)

    @classmethod
    def load(cls, directory: Path) -> RouteState:
        """Read the state of ``directory`` (empty when there is none).

        Raises:
            ValidationError: the file exists but cannot be read.
        """
        path = directory / STATE_NAME
        try:
            obj = json.loads(path.read_bytes())
            jobs = [JobState.from_json(job) for job in obj["jobs"]]
        except FileNotFoundError:
            return cls(path)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError(
                "--output", f"{path} is not a batch state file ({exc}); move it away to start over"
            ) from None
        return cls(path, jobs)

    @property
    def live(self) -> list[JobState]:
        """The jobs whose results are not all in the manifest yet."""
        return [job for job in self.jobs if not job.collected]

    def save(self) -> None:
        """Write the state atomically and durably (temporary file, fsync, rename)."""
        from .._fs import write_atomic

        body = {"jobs": [job.to_json() for job in self.jobs]}
        write_atomic(self.path, json.dumps(body, indent=1).encode() + b"\n")
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _body(client: AsyncImagesClient, entry: Entry, params: Mapping[str, Any]) -> dict[str, Any]:
    """The request body of one item: the direct call's parameters, validated the same way."""
    merged = {k: v for k, v in {**params, **entry.params}.items() if k not in _NOT_SENT}
    merged.setdefault("model", client.model)
    return dict(GenerateParams.build(prompt=entry.prompt, **merged).to_json())


class _Run:
    """One run of the route: the client, the directory, the manifest, the progress."""

    def __init__(
        self,
        client: AsyncImagesClient,
        folder: Path,
        manifest: Manifest,
        summary: BatchSummary,
        sink: ProgressSink,
        *,
        poll_interval: float,
        completion_window: str,
        params: Mapping[str, Any],
        control: BatchControl,
        prices: PriceTable,
    ) -> None:
        self.client = client
        self.params = params
        self.prices = prices
        self.control = control
        self.folder = folder
        self.manifest = manifest
        self.summary = summary
        self.sink = sink
        self.poll_interval = poll_interval
        self.completion_window = completion_window
        self.state = RouteState.load(folder)
        self.entries: dict[str, Entry] = {}
        self.chunks: dict[str, list[bytes]] = {}
        """The input files planned by this run, by their SHA-256."""

    async def _save(self) -> None:
        await blocking(self.state.save)

    async def _record(self, record: Record) -> None:
        await blocking(self.manifest.append, record)
        self.manifest.done.add(record.id)
        summary = self.summary
        if record.ok:
            summary.ok += 1
            summary.images += len(record.files)
            summary.count_cost(record)
        else:
            summary.failed += 1
            if len(summary.failures) < summary.max_failures_kept:
                summary.failures.append(record)
        self.sink.item(record, summary)

    def _params_of(self, entry: Entry) -> dict[str, Any]:
        """The item's effective parameters, as the direct route records them."""
        return {k: v for k, v in {**self.params, **entry.params}.items() if v is not None}

    def _failed(self, entry: Entry, error: Mapping[str, Any], **fields: Any) -> Record:
        return Record(entry.id, entry.line, entry.prompt, self._params_of(entry), "failed",
                      error=error, **fields)

    async def plan(self) -> None:
        """Make the jobs for every item not done, failing at once what cannot be sent."""
        lines: list[bytes] = []
        for entry in self.entries.values():
            if entry.problem is not None:
                await self._record(self._failed(entry, {
                    "type": "InputError", "code": None, "status": None, "param": None,
                    "message": entry.problem}, attempts=0))
                continue
            try:
                lines.append(batch_api_line(entry.id, "generate",
                                        _body(self.client, entry, self.params)))
            except ValidationError as exc:
                await self._record(self._failed(entry, error_fields(exc), attempts=0))
        for chunk in split_batch_lines(lines):
            digest = hashlib.sha256(b"".join(chunk)).hexdigest()
            self.chunks[digest] = chunk
            self.state.jobs.append(JobState(digest, len(chunk)))
        await self._save()

    async def adopt_uploads(self) -> None:
        """Jobs planned but without a file id: find their upload, or forget them.

        A job forgotten here never reached the server (no file by its name), so
        planning again from the manifest sends its items once.
        """
        kept = []
        changed = False
        for job in self.state.jobs:
            if job.file_id is None:
                changed = True
                job.file_id = await self._find_file(job.filename)
                if job.file_id is None:
                    continue
            kept.append(job)
        if changed:
            self.state.jobs = kept
            await self._save()

    async def start(self, job: JobState) -> None:
        """Upload and create, each at most once across runs (see the module docstring)."""
        client = self.client
        fresh = job.file_id is None
        if job.file_id is None:
            job.file_id = await upload(client, self.chunks[job.sha256], job.filename)
            await self._save()
        if job.batch_id is None:
            # A file uploaded by an earlier run may have its batch already.
            batch = None if fresh else await find_batch(client, job.file_id)
            if batch is None:
                batch = await create(
                    client, job.file_id, "generate",
                    completion_window=self.completion_window,
                    metadata={"asyncimg_directory": self.folder.resolve().name[:512],
                              "asyncimg_input": job.sha256[:32]},
                )
            job.batch_id, job.status = batch.id, batch.status
            await self._save()

    async def _find_file(self, filename: str) -> str | None:
        from .api import _decode

        listed = _decode(await self.client.request("GET", "/files", params={"purpose": "batch"}))
        data = listed.get("data") if isinstance(listed, dict) else None
        for obj in data if isinstance(data, list) else ():
            if isinstance(obj, dict) and obj.get("filename") == filename and isinstance(
                obj.get("id"), str
            ):
                return str(obj["id"])
        return None

    async def finish(self, job: JobState) -> BatchAPIState:
        """Poll until the batch ends, then write every result the manifest lacks."""
        assert job.batch_id is not None
        batch_job = BatchAPIJob(self.client, job.batch_id)
        try:
            await self._poll(batch_job)
        except NotFoundError:
            raise ValidationError(
                "--output", f"the batch {job.batch_id} recorded in {self.state.path} is unknown "
                f"to {self.client.base_url} (made on another server, or an --emulator run?): "
                f"move {self.state.path.name} away to start over"
            ) from None

        while True:
            batch = await self._poll(batch_job)
            self.summary.batch = batch
            self.sink.tick(self.summary)
            if batch.done or await self._pause():
                break
        if not batch.done:
            return batch  # stopped: a rerun goes on polling
        job.status = batch.status
        await self._save()
        results = await self._collect(batch_job)
        for result in results.values():
            entry = self.entries.get(result.custom_id)
            if entry is None or result.custom_id in self.manifest.done:
                continue  # done in a run that was killed while writing, or not ours
            if self.control.reason is not None:
                return batch  # stopped: a rerun writes the rest
            await self._record(await self._result_record(entry, result))
        for item_id in await self._ids_of(job) - results.keys():
            entry = self.entries[item_id]
            await self._record(self._failed(entry, {
                "type": "BatchRequestError", "code": f"batch_{batch.status}", "status": None,
                "param": None,
                "message": f"the batch ended {batch.status} without an answer for this item",
            }, attempts=0))
        job.collected = True
        await self._save()
        return batch

    async def _poll(self, batch_job: BatchAPIJob) -> BatchAPIState:
        """Poll once through transient errors, each shown on the progress line."""
        def retrying(exc: APIError, delay: float, give_up_at: float) -> None:
            last = self.summary.batch or BatchAPIState(batch_job.id, "unknown")
            until = time.strftime("%H:%M UTC", time.gmtime(time.time() + give_up_at
                                                            - time.monotonic()))
            self._note(last, f"poll failed ({_short(exc)}), polling again in {delay:.3g}s; "
                             f"giving up at {until} if it keeps failing")

        return await batch_job.poll(poll_interval=self.poll_interval,
                                    give_up_after=window_seconds(self.completion_window),
                                    on_retry=retrying)

    def _note(self, batch: BatchAPIState, note: str) -> None:
        """Say ``note`` on the batch's progress line."""
        self.summary.batch = attrs.evolve(batch, note=note)
        self.sink.tick(self.summary)

    async def _collect(self, batch_job: BatchAPIJob) -> dict[str, BatchAPIResult]:
        """Every result of an ended batch by custom id, its files read again while short.

        A custom id answered twice keeps its success. Files holding fewer lines than
        the batch's ``request_counts`` (cut at a line boundary) are downloaded again
        (:data:`_READS` times); still short, the results read so far are written and
        the run stops, the batch left to a rerun rather than its items failed.
        """
        batch = batch_job.batch
        assert batch is not None
        expected = batch.request_counts.completed + batch.request_counts.failed
        results: dict[str, BatchAPIResult] = {}
        for attempt in range(1, _READS + 1):
            unreadable: list[str] = []
            lines = 0
            async for result in batch_job.results(on_unreadable=unreadable.append):
                lines += 1
                kept = results.get(result.custom_id)
                if kept is None or (result.ok and not kept.ok):
                    results[result.custom_id] = result
            lines += len(unreadable)
            if lines >= expected:
                for message in unreadable:
                    logger.warning("batch %s: %s", batch.id, message)
                    self._note(batch, message)
                return results
            if attempt < _READS:
                await anyio.sleep(self.client.retry_policy.initial * 2 ** (attempt - 1))
        for result in results.values():
            entry = self.entries.get(result.custom_id)
            if entry is not None and result.custom_id not in self.manifest.done:
                await self._record(await self._result_record(entry, result))
        raise APIResponseValidationError(
            f"the result files of batch {batch.id} hold {lines} lines but its request_counts "
            f"say {expected} (read {_READS} times): the answers read were saved; "
            "run again later to collect the rest", status_code=200)

    async def _pause(self) -> bool:
        """Sleep ``poll_interval`` seconds, or less if the run is stopped; True when stopped."""
        deadline = time.monotonic() + self.poll_interval
        while self.control.reason is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await anyio.sleep(min(left, 0.1))
        return True

    async def _ids_of(self, job: JobState) -> set[str]:
        """The custom ids a job's input file holds (read back from the API when resumed)."""
        chunk = self.chunks.get(job.sha256)
        if chunk is None:
            assert job.file_id is not None
            chunk = await file_lines(self.client, job.file_id)
        return {json.loads(line)["custom_id"] for line in chunk}

    async def _result_record(self, entry: Entry, result: BatchAPIResult) -> Record:
        started = time.monotonic()
        if result.response is None:
            assert result.error is not None
            return self._failed(entry, error_fields(result.error),
                                request_id=result.error.request_id, attempts=1)
        response = result.response
        usage = response.usage
        if usage is not None:
            tokens = self.summary.tokens
            tokens["input"] += usage.input_tokens or 0
            tokens["output"] += usage.output_tokens or 0
            tokens["total"] += usage.total_tokens or 0
        try:
            paths = await self.client.save(response, self.folder, stem=entry.id, overwrite=True)
        except AsyncImgError as exc:
            return self._failed(entry, error_fields(exc), request_id=response.request_id,
                                attempts=1)
        if not paths:
            return self._failed(entry, {
                "type": "APIResponseValidationError", "code": None, "status": 200,
                "param": None, "message": "the answer held no images"},
                request_id=response.request_id, attempts=1)
        revised = next((i.revised_prompt for i in response.data if i.revised_prompt), None)
        params = self._params_of(entry)
        return Record(entry.id, entry.line, entry.prompt, params, "ok",
                      files=tuple(p.name for p in paths), images=len(paths),
                      request_id=response.request_id, revised_prompt=revised, attempts=1,
                      seconds=time.monotonic() - started,
                      usage=None if usage is None else usage_fields(usage),
                      cost_usd=cost_of(usage, params.get("model"), self.prices,
                                       batch_api=True))


async def run_via_batch_api(
    client: AsyncImagesClient,
    open_input: Callable[[], TextLines],
    fmt: str,
    directory: str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    retry_failed: bool = True,
    poll_interval: float = 60.0,
    completion_window: str = "24h",
    progress: ProgressSink | None = None,
    server: str | None = None,
    control: BatchControl | None = None,
    prices: PriceTable | None = None,
) -> BatchSummary:
    """Run every not-yet-done item of the input through the Batch API (see the module doc).

    Live batches recorded in the directory are resumed first; only when none is
    live are new ones made. ``server`` and ``control`` are as for
    :func:`~asyncimg._runner.run_batch`: the directory remembers its server, and a
    fatal error (a refused key, an unknown model, an exhausted quota) or
    ``control.interrupt`` ends the run early with ``summary.stopped`` set; a rerun
    resumes. Each done item's manifest line carries its cost at the Batch API's half
    price, from ``prices`` (default: the shipped table).

    Raises:
        ValidationError: a bad option, or the directory's state file is unreadable.
        InputError: the input is unusable, or another run holds the directory.
        APIStatusError, APIConnectionError: the Batch API refused or could not be reached.
        OSError: the directory cannot be written.
    """
    params = dict(params or {})
    check_batch_params(client, params)
    folder = Path(directory)
    sink = progress or ProgressSink()
    control = control or BatchControl()
    manifest = Manifest(folder, retry_failed=retry_failed,
                        server=server or public_url(client.base_url))
    try:
        await blocking(manifest.open)
        # The client's default model changes the images: it is in every id, as directly.
        effective = {"model": client.model, **params} if client.model else params
        summary = BatchSummary(total=None, route="batch-api")
        wall_start, before = time.time(), client.limiter.stats()
        table = prices if prices is not None else await blocking(load_prices)
        run = _Run(client, folder, manifest, summary, sink, poll_interval=poll_interval,
                   completion_window=completion_window, params=effective, control=control,
                   prices=table)

        def read() -> dict[str, Entry]:
            with open_input() as stream:
                return {e.id: e for e in read_entries(stream, fmt, effective)}

        everything = await blocking(read)
        await run.adopt_uploads()
        live = run.state.live
        if live:
            run.entries = everything
        else:
            run.entries = {k: e for k, e in everything.items() if k not in manifest.done}
            summary.skipped = len(everything) - len(run.entries)
        summary.total = len(run.entries) if not live else sum(job.lines for job in live)
        sink.start(summary)

        async def drive(_stats: CallStats) -> None:
            if not live:
                await run.plan()
            for job in run.state.live:
                await run.start(job)
            for job in run.state.live:
                await run.finish(job)
                if control.reason is not None:
                    break

        try:
            # Every step is recorded before it can have an effect, so a stop may cancel
            # it anywhere (nothing of an item is on the wire here): Ctrl-C acts at once.
            await control.run(drive)
        except APIStatusError as exc:
            message = fatal_error(exc)
            if message is None:
                raise
            control.stop("fatal", message)
        finally:
            summary.stopped, summary.stop_message = control.reason, control.message
            summary.elapsed = time.monotonic() - summary.started
            with contextlib.suppress(OSError):  # a full disk: the summary still comes
                append_run_line(folder, client, effective, summary, wall_start, before, [])
            sink.stop(summary)
        return summary
    finally:
        manifest.close()


async def batches_status(
    client: AsyncImagesClient, directory: str | os.PathLike[str]
) -> list[tuple[JobState, BatchAPIState | None]]:
    """Every job recorded in ``directory``, with what the API says of its batch now.

    A job not yet created pairs with None.

    Raises:
        ValidationError: the state file cannot be read.
        APIStatusError, APIConnectionError: a batch could not be retrieved.
    """
    state = RouteState.load(Path(directory))
    out: list[tuple[JobState, BatchAPIState | None]] = []
    for job in state.jobs:
        batch = None if job.batch_id is None else await BatchAPIJob(client, job.batch_id).retrieve()
        out.append((job, batch))
    return out


async def cancel_batches(
    client: AsyncImagesClient, directory: str | os.PathLike[str]
) -> list[BatchAPIState]:
    """Ask for every live batch recorded in ``directory`` to be cancelled; returns them.

    A rerun of the batch then collects what they answered before the cancel.

    Raises:
        ValidationError: the state file cannot be read.
        APIStatusError, APIConnectionError: a cancel failed.
    """
    state = RouteState.load(Path(directory))
    cancelled = []
    for job in state.live:
        if job.batch_id is None:
            continue
        batch_job = BatchAPIJob(client, job.batch_id)
        batch = await batch_job.retrieve()
        if not batch.done:
            batch = await batch_job.cancel()
        cancelled.append(batch)
    return cancelled
