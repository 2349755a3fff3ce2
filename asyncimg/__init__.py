"""asyncimg: an async-first client for the OpenAI Images API and the servers that speak it.

::

    from asyncimg import AsyncImagesClient

    async with AsyncImagesClient() as client:
        response = await client.generate("a white siamese cat", size="1024x1024")
        await client.save(response, "out/")
"""

import typing as _typing

from ._batchapi import Batch, BatchJob, BatchResult, batch_line, submit_batch
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
from ._limiter import Limiter, LimiterStats, RateLimit, RateLimiter, RatePermit
from ._models import (
    BatchItem,
    Image,
    ImagesResponse,
    InputTokensDetails,
    OutputTokensDetails,
    PromptSource,
    PromptSpec,
    Usage,
)
from ._refs import ImageRef
from ._stream import (
    CompletedImageEvent,
    ImageStream,
    ImageStreamEvent,
    PartialImageEvent,
    UnknownEvent,
)
from ._version import __version__

if _typing.TYPE_CHECKING:
    from ._redis import RedisLimiter
    from ._sync import ImagesClient

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
    "Batch",
    "BatchItem",
    "BatchJob",
    "BatchRequestError",
    "BatchResult",
    "Clock",
    "CompletedImageEvent",
    "ConflictError",
    "ContentPolicyError",
    "EditKeywords",
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
    "Limiter",
    "LimiterStats",
    "LimiterUnavailableError",
    "NotFoundError",
    "OutputTokensDetails",
    "PartialImageEvent",
    "PermissionDeniedError",
    "PromptSource",
    "PromptSpec",
    "RateLimit",
    "RateLimitError",
    "RateLimiter",
    "RatePermit",
    "RedisLimiter",
    "RequestOptions",
    "ResponseTooLargeError",
    "UnknownEvent",
    "UnprocessableEntityError",
    "Usage",
    "ValidationError",
    "VariationKeywords",
    "__version__",
    "batch_line",
    "submit_batch",
]


def __getattr__(name: str) -> _typing.Any:
    # The blocking client (and the anyio portal machinery) loads on first use:
    # an async service never pays its import.
    if name == "ImagesClient":
        from ._sync import ImagesClient

        globals()["ImagesClient"] = ImagesClient
        return ImagesClient
    if name == "RedisLimiter":  # the `redis` extra: imported only when asked for
        from ._redis import RedisLimiter

        globals()["RedisLimiter"] = RedisLimiter
        return RedisLimiter
    raise AttributeError(f"module 'asyncimg' has no attribute {name!r}")
