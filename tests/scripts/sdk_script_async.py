"""A script written for ``openai.AsyncOpenAI``: tests/test_sdk_port.py runs it as it is
with the official SDK, and on asyncimg after changing only the imports and the
constructor. Both against the emulator."""

import base64
import json
from pathlib import Path

import httpx2
from openai import AsyncOpenAI, BadRequestError


async def main(base_url: str, api_key: str, workdir: Path) -> dict:
    out: dict = {}
    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=2)
    async with client:
        result = await client.images.generate(
            model="gpt-image-1.5", prompt="a white siamese cat", size="1024x1536", quality="low"
        )
        data = base64.b64decode(result.data[0].b64_json)
        (workdir / "cat.png").write_bytes(data)
        out["generate"] = (result.size, result.quality, data[:8])
        out["request_id"] = result._request_id.startswith("req_")

        # as the SDK's README does it: open() in async code (small local files)
        lounge, mask_path = workdir / "lounge.png", workdir / "mask.png"
        with open(lounge, "rb") as image, open(mask_path, "rb") as mask:  # noqa: ASYNC230
            edited = await client.images.edit(
                model="gpt-image-1.5", image=image, mask=mask, prompt="a flamingo in the pool"
            )
        out["edit"] = len(edited.data)

        with open(lounge, "rb") as image:  # noqa: ASYNC230
            varied = await client.images.create_variation(image=image, n=2, size="256x256")
        out["variation"] = [bool(item.url) for item in varied.data]

        raw = await client.images.with_raw_response.generate(
            model="gpt-image-1.5", prompt="a lantern"
        )
        out["raw"] = (raw.headers.get("X-Request-Id", "").startswith("req_"), raw.status_code)
        parsed = raw.parse()
        out["parsed"] = parsed.output_format

        dumped = result.model_dump()
        out["dump"] = sorted(k for k, v in dumped.items() if v is not None)
        out["dump_json"] = json.loads(result.model_dump_json())["size"]
        out["to_dict"] = sorted(result.to_dict()["usage"])

        patient = client.with_options(timeout=httpx2.Timeout(60.0, connect=5.0), max_retries=1)
        again = await patient.images.generate(model="gpt-image-1.5", prompt="a heron")
        out["with_options"] = len(again.data)

        try:
            await client.images.generate(model="gpt-image-1.5", prompt="p", size="1792x1024")
        except BadRequestError as exc:
            out["bad_request"] = exc.param
    return out
