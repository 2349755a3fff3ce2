"""Run by tests/test_sync.py: use an ImagesClient and never close it.

Usage: python unclosed_sync_client.py BASE_URL API_KEY [iterate]

With ``iterate`` it also leaves a ``generate_many`` iterator half consumed.
Interpreter exit must clean everything up with nothing on stderr.
"""

import sys

from asyncimg._sync import ImagesClient

base_url, api_key = sys.argv[1], sys.argv[2]
client = ImagesClient(api_key=api_key, base_url=base_url, rate_limit=None)
response = client.generate("a lighthouse at dusk", size="256x256", response_format="b64_json")
assert client.download(response.data[0]).startswith(b"\x89PNG")
if sys.argv[3:] == ["iterate"]:
    items = client.generate_many([f"boat {i}" for i in range(6)], size="256x256")
    next(items)
print("ok")
