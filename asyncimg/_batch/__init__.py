"""Everything batch, behind one door: many prompts at once, and OpenAI's Batch API.

Rooms (each a module of this package):

* ``many``: :func:`generate_many` and its :class:`BatchItem` (the library's batches);
* ``input``: reading a prompts file (txt, jsonl, csv) into items with stable ids;
* ``manifest``: ``manifest.jsonl`` and ``runs.jsonl``, written and read in one place;
* ``control``: when a batch stops (fatal errors, signals) and what is in flight;
* ``runner``: ``asyncimg batch``'s direct route, one request per item;
* ``api``: OpenAI's Batch API endpoints (Files and Batches);
* ``plan``: ``asyncimg batch --dry-run``, a batch's items, time and cost, nothing sent;
* ``route``: ``asyncimg batch --via batch-api``, the same job through the Batch API;
* ``report``: ``asyncimg report``, the static page of a directory (``templates/``).

The wing talks to the server only through the client's public methods
(:meth:`~asyncimg.AsyncImagesClient.generate`, ``save``, ``request``). Names are
loaded from their room on first use, so ``import asyncimg`` pays for none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from .api import (
        BatchAPIJob,
        BatchAPIResult,
        BatchAPIState,
        batch_api_line,
        submit_batch,
    )
    from .control import BatchControl, fatal_error
    from .input import InputError, detect_format, open_text
    from .manifest import Record
    from .many import BatchItem, BatchIterator, PromptSource, PromptSpec, generate_many
    from .plan import Plan, plan_batch
    from .report import write_report
    from .route import batches_status, cancel_batches, run_via_batch_api
    from .runner import BatchSummary, ProgressSink, directory_costs, run_batch

__all__ = [
    "BatchAPIJob",
    "BatchAPIResult",
    "BatchAPIState",
    "BatchControl",
    "BatchItem",
    "BatchIterator",
    "BatchSummary",
    "InputError",
    "Plan",
    "ProgressSink",
    "PromptSource",
    "PromptSpec",
    "Record",
    "batch_api_line",
    "batches_status",
    "cancel_batches",
    "detect_format",
    "directory_costs",
    "fatal_error",
    "generate_many",
    "open_text",
    "plan_batch",
    "run_batch",
    "run_via_batch_api",
    "submit_batch",
    "write_report",
]

_ROOMS = {
    "BatchAPIJob": ".api",
    "BatchAPIResult": ".api",
    "BatchAPIState": ".api",
    "batch_api_line": ".api",
    "submit_batch": ".api",
    "BatchControl": ".control",
    "fatal_error": ".control",
    "InputError": ".input",
    "detect_format": ".input",
    "open_text": ".input",
    "Record": ".manifest",
    "BatchItem": ".many",
    "BatchIterator": ".many",
    "PromptSource": ".many",
    "PromptSpec": ".many",
    "generate_many": ".many",
    "Plan": ".plan",
    "plan_batch": ".plan",
    "write_report": ".report",
    "batches_status": ".route",
    "cancel_batches": ".route",
    "run_via_batch_api": ".route",
    "BatchSummary": ".runner",
    "ProgressSink": ".runner",
    "directory_costs": ".runner",
    "run_batch": ".runner",
}


__getattr__ = lazy_names(__name__, globals(), _ROOMS)
