"""A script written for ``openai.OpenAI`` (blocking): tests/test_sdk_port.py runs it
with the official SDK and on asyncimg's ImagesClient after changing only the
imports and the constructor. Both against the emulator."""

import base64
from pathlib import Path

import httpx2
from openai import BadRequestError, OpenAI


def main(base_url: str, api_key: str, workdir: Path) -> dict:
    out: dict = {}
    with OpenAI(base_url=base_url, api_key=api_key, max_retries=2) as client:
        result = client.images.generate(model="gpt-image-1.5", prompt="a cat", size="1024x1024")
        out["generate"] = base64.b64decode(result.data[0].b64_json)[:8]
        out["request_id"] = result._request_id.startswith("req_")
        with open(workdir / "lounge.png", "rb") as image, open(workdir / "mask.png", "rb") as mask:
            edited = client.images.edit(
                model="gpt-image-1.5", image=image, mask=mask, prompt="a flamingo"
            )
        out["edit"] = len(edited.data)
        with open(workdir / "lounge.png", "rb") as image:
            out["variation"] = len(client.images.create_variation(image=image, n=2).data)
        raw = client.images.with_raw_response.generate(model="gpt-image-1.5", prompt="a lantern")
        out["raw"] = (raw.headers["x-request-id"].startswith("req_"), raw.status_code)
        out["parsed"] = raw.parse().size
        out["dump"] = result.model_dump(exclude_none=True)["output_format"]
        patient = client.with_options(timeout=httpx2.Timeout(60.0, connect=5.0), max_retries=1)
        out["with_options"] = len(patient.images.generate(model="gpt-image-1.5", prompt="b").data)
        try:
            client.images.generate(model="gpt-image-1.5", prompt="p", size="1792x1024")
        except BadRequestError as exc:
            out["bad_request"] = exc.param
    return out
