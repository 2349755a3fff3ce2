"""asyncimg.testing.pytest_plugin as a user's suite meets it (pytester, in a subprocess)."""

from __future__ import annotations

import pytest

USER_TESTS = '''
import pytest
from asyncimg import AsyncImagesClient, ImagesClient
from asyncimg.testing.pytest_plugin import EMULATOR_API_KEY

pytestmark = pytest.mark.subprocess

pytest_plugins = ["asyncimg.testing.pytest_plugin"]


@pytest.mark.asyncio
async def test_async(emulator):
    assert emulator.api_key == EMULATOR_API_KEY
    async with AsyncImagesClient(api_key=emulator.api_key, base_url=emulator.base_url) as c:
        r = await c.generate("a cat", model="dall-e-2", size="256x256")
    assert r.data
    assert len(emulator.requests("generate")) == 1


def test_sync(emulator_sync):
    with ImagesClient(api_key=emulator_sync.api_key, base_url=emulator_sync.base_url) as c:
        r = c.generate("a cat", model="dall-e-2", size="256x256")
    assert r.data
    assert len(emulator_sync.requests("generate")) == 1


def test_sync_with_the_async_fixture_is_told_not_hung(emulator):
    ImagesClient(api_key=emulator.api_key, base_url=emulator.base_url).generate("a cat")


def test_sync_wrong_key_is_401(emulator_sync):
    from asyncimg import AuthenticationError

    with ImagesClient(api_key="sk-test", base_url=emulator_sync.base_url) as c:
        with pytest.raises(AuthenticationError):
            c.generate("a cat")
'''


def test_both_fixtures_in_a_users_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*use `emulator_sync`*"])
