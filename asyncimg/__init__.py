"""asyncimg: an async-first client for the OpenAI Images API and the servers that speak it.

::

    from asyncimg import AsyncImagesClient

    async with AsyncImagesClient() as client:
        response = await client.generate("a white siamese cat", size="1024x1024")
        await client.save(response, "out/")
"""

from ._client import AsyncImagesClient
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AsyncImgError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ContentPolicyError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseTooLargeError,
    UnprocessableEntityError,
    ValidationError,
)
from ._files import ImageFile, ImageInput
from ._limiter import Limiter, LimiterStats, RateLimit, RateLimiter
from ._models import Image, ImagesResponse, InputTokensDetails, OutputTokensDetails, Usage
from ._sync import ImagesClient
from ._version import __version__

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
    "ConflictError",
    "ContentPolicyError",
    "Image",
    "ImageFile",
    "ImageInput",
    "ImagesClient",
    "ImagesResponse",
    "InputTokensDetails",
    "InternalServerError",
    "Limiter",
    "LimiterStats",
    "NotFoundError",
    "OutputTokensDetails",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitError",
    "RateLimiter",
    "ResponseTooLargeError",
    "UnprocessableEntityError",
    "Usage",
    "ValidationError",
    "__version__",
]
