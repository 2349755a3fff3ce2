"""asyncimg: an async-first client for the OpenAI Images API and the servers that speak it.

::

    from asyncimg import AsyncImagesClient

    async with AsyncImagesClient() as client:
        response = await client.generate("a white siamese cat", size="1024x1024")
        await client.save(response, "out/")
"""

import typing as _typing
import warnings as _warnings

from ._callstats import CallStats
from ._client import AsyncImagesClient
from ._clock import Clock
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AsyncImgError,
    AuthenticationError,
    BadRequestError,
    BatchRequestError,
    ConflictError,
    ContentPolicyError,
    InternalServerError,
    InvalidRequestError,
    LimiterUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseTooLargeError,
    UnprocessableEntityError,
    ValidationError,
)
from ._files import ImageFile, ImageInput
from ._keywords import EditKeywords, GenerateKeywords, RequestOptions, VariationKeywords
from ._lazy import lazy_names as _lazy_names
from ._limiter import Limiter, LimiterStats, RateLimit, RateLimiter, RatePermit
from ._models import (
    Image,
    ImagesResponse,
    InputTokensDetails,
    OutputTokensDetails,
    SvgUsage,
    Usage,
)
from ._refs import EditImages, ImageRef
from ._retry import RetryPolicy, retry_countdown
from ._sdk import RawAPIResponse
from ._version import __version__

if _typing.TYPE_CHECKING:
    from ._batch import (
        BatchAPIJob,
        BatchAPIResult,
        BatchAPIState,
        BatchItem,
        BatchIterator,
        PromptSource,
        PromptSpec,
        batch_api_line,
        submit_batch,
    )
    from ._cost import Budget, Estimate, PriceTable, cost_of, estimate_request, load_prices
    from ._redis import RedisLimiter
    from ._stream import (
        CompletedImageEvent,
        ImageStream,
        ImageStreamEvent,
        PartialImageEvent,
        UnknownEvent,
    )
    from ._sync import ImagesClient, shared_images_client
    from ._transport import RawResponse

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncImagesClient",
    "AsyncImgError",
    "AuthenticationError",
    "BadRequestError",
    "BatchAPIJob",
    "BatchAPIResult",
    "BatchAPIState",
    "BatchItem",
    "BatchIterator",
    "BatchRequestError",
    "Budget",
    "CallStats",
    "Clock",
    "CompletedImageEvent",
    "ConflictError",
    "ContentPolicyError",
    "EditImages",
    "EditKeywords",
    "Estimate",
    "GenerateKeywords",
    "Image",
    "ImageFile",
    "ImageInput",
    "ImageRef",
    "ImageStream",
    "ImageStreamEvent",
    "ImagesClient",
    "ImagesResponse",
    "InputTokensDetails",
    "InternalServerError",
    "InvalidRequestError",
    "Limiter",
    "LimiterStats",
    "LimiterUnavailableError",
    "NotFoundError",
    "OutputTokensDetails",
    "PartialImageEvent",
    "PermissionDeniedError",
    "PriceTable",
    "PromptSource",
    "PromptSpec",
    "RateLimit",
    "RateLimitError",
    "RateLimiter",
    "RatePermit",
    "RawAPIResponse",
    "RawResponse",
    "RedisLimiter",
    "RequestOptions",
    "ResponseTooLargeError",
    "RetryPolicy",
    "SvgUsage",
    "UnknownEvent",
    "UnprocessableEntityError",
    "Usage",
    "ValidationError",
    "VariationKeywords",
    "__version__",
    "batch_api_line",
    "cost_of",
    "estimate_request",
    "load_prices",
    "retry_countdown",
    "shared_images_client",
    "submit_batch",
]


# Loaded on first use, so that an async service never pays their import: the
# blocking client (and the anyio portal machinery), the batch wing, the `redis`
# extra, and the stream's and the cost's values (attrs classes: each costs about a
# millisecond to create).
_LAZY = {
    "RawResponse": "._transport",
    "CompletedImageEvent": "._stream",
    "ImageStream": "._stream",
    "ImageStreamEvent": "._stream",
    "PartialImageEvent": "._stream",
    "UnknownEvent": "._stream",
    "Budget": "._cost",
    "Estimate": "._cost",
    "PriceTable": "._cost",
    "cost_of": "._cost",
    "estimate_request": "._cost",
    "load_prices": "._cost",
    "ImagesClient": "._sync",
    "shared_images_client": "._sync",
    "RedisLimiter": "._redis",
    "BatchAPIJob": "._batch",
    "BatchAPIResult": "._batch",
    "BatchAPIState": "._batch",
    "BatchItem": "._batch",
    "BatchIterator": "._batch",
    "PromptSource": "._batch",
    "PromptSpec": "._batch",
    "batch_api_line": "._batch",
    "submit_batch": "._batch",
}

# The Batch API's names before they said so; kept working, with a DeprecationWarning.
_RENAMED = {
    "Batch": "BatchAPIState",
    "BatchJob": "BatchAPIJob",
    "BatchResult": "BatchAPIResult",
    "batch_line": "batch_api_line",
}


_load = _lazy_names(__name__, globals(), _LAZY)


def __getattr__(name: str) -> _typing.Any:
    if name in _RENAMED:
        new = _RENAMED[name]
        _warnings.warn(
            f"asyncimg.{name} is now asyncimg.{new} (OpenAI's Batch API, not generate_many)",
            DeprecationWarning,
            stacklevel=2,
        )
        return _load(new)
    return _load(name)
