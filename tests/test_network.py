"""Gateways, proxies, TLS and a caller's own session, against real servers on 127.0.0.1.

A small forward proxy (requests arrive in absolute form; CONNECT tunnels for
https), a TLS server with a private CA made by trustme, and the emulator.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDict

from asyncimg import APIConnectionError, AsyncImagesClient, ValidationError
from asyncimg.testing import Emulator, Fault, make_png

from .conftest import TEST_KEY

B64 = base64.b64encode(make_png(8, 8, "tls")).decode()
PROXY_PASSWORD = "proxy-pw-SECRET-4711"

_HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive", "host",
        "transfer-encoding", "content-length"}


@pytest.fixture(autouse=True)
def _no_ambient_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                 "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


async def _serve(app: web.Application, **site: Any) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0, **site)
    await tcp.start()
    return runner, tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


class ForwardProxy:
    """An HTTP forward proxy: plain requests in absolute form, CONNECT for https."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._session: aiohttp.ClientSession | None = None

    def url(self, credentials: bool = False) -> str:
        auth = f"user:{PROXY_PASSWORD}@" if credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            self.seen.append({"method": method, "target": target, "headers": headers})
            if method == "CONNECT":
                await self._tunnel(target, reader, writer)
            else:
                await self._forward(method, target, headers, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def _forward(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        length = int(headers.get("Content-Length", "0"))
        body = await reader.readexactly(length) if length else b""
        assert self._session is not None
        send = {k: v for k, v in headers.items() if k.lower() not in _HOP}
        async with self._session.request(method, target, data=body, headers=send) as resp:
            data = await resp.read()
            out = [f"HTTP/1.1 {resp.status} {resp.reason}"]
            out += [f"{k}: {v}" for k, v in resp.headers.items() if k.lower() not in _HOP]
            out += [f"Content-Length: {len(data)}", "Connection: close", "", ""]
        writer.write("\r\n".join(out).encode("latin-1") + data)
        await writer.drain()

    async def __aenter__(self) -> ForwardProxy:
        self._session = aiohttp.ClientSession()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        assert self._session is not None
        self._server.close()
        await self._server.wait_closed()
        await self._session.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    async with ForwardProxy() as p:
        yield p


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def tls_url(ca: trustme.CA) -> AsyncIterator[str]:
    """An https images server whose certificate is signed by the private CA."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"created": 1, "data": [{"b64_json": B64}]})

    app = web.Application()
    app.router.add_post("/v1/images/generations", handle)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    runner, port = await _serve(app, ssl_context=context)
    try:
        yield f"https://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def client_for(base_url: str, **options: Any) -> AsyncImagesClient:
    return AsyncImagesClient(api_key=TEST_KEY, base_url=base_url, rate_limit=None,
                             max_retries=0, **options)


# ------------------------------------------------------------------- gateways


async def test_default_and_extra_headers_and_query(emu: Emulator) -> None:
    async with client_for(
        emu.base_url + "?gateway-key=abc",
        default_headers={"X-Gateway": "from-client", "X-Team": "imaging"},
        default_query={"team": "a", "tag": "client"},
    ) as client:
        assert "gateway-key" not in repr(client)  # a base URL's query may hold a secret
        await client.generate("p", extra_headers={"x-gateway": "from-call"},
                              extra_query={"tag": "call"})
        await client.edit(make_png(8, 8, "e", alpha=True), "p", extra_query={"e": "1"})
        await client.create_variation(make_png(8, 8, "v"), extra_headers={"X-V": "1"})
    generate, edit, variation = emu.journal
    assert generate.path == "/v1/images/generations"
    assert generate.query == {"gateway-key": "abc", "team": "a", "tag": "call"}
    headers = CIMultiDict(generate.headers)
    assert headers.getall("X-Gateway") == ["from-call"]  # the call's replaces the client's
    assert headers["X-Team"] == "imaging"
    assert headers["Authorization"].startswith("Bearer ")
    assert edit.query == {"gateway-key": "abc", "team": "a", "tag": "client", "e": "1"}
    assert variation.headers["X-V"] == "1"


async def test_bad_extra_headers_are_refused_before_sending(emu: Emulator) -> None:
    async with client_for(emu.base_url) as client:
        with pytest.raises(ValidationError) as info:
            await client.generate("p", extra_headers={"X-Bad": "a\r\nInjected: 1"})
        assert info.value.param == "extra_headers"
        with pytest.raises(ValidationError) as info:
            await client.generate("p", extra_query={"a": object()})  # type: ignore[dict-item]
        assert info.value.param == "extra_query"
    assert len(emu.journal) == 0


# -------------------------------------------------------------------- proxies


async def test_an_explicit_proxy_gets_requests_in_absolute_form(
    emu: Emulator, proxy: ForwardProxy, log_lines: list[str]
) -> None:
    async with client_for(emu.base_url, proxy=proxy.url(credentials=True)) as client:
        assert PROXY_PASSWORD not in repr(client)
        r = await client.generate("a lantern", model="dall-e-2", size="256x256")
        assert r.data[0].url is not None
        await client.download(r.data[0])
    generate, download = proxy.seen
    assert generate["target"] == emu.base_url + "/images/generations"  # absolute form
    assert download["target"].startswith(emu.blob_base_url + "/blobs/")
    expected = base64.b64encode(f"user:{PROXY_PASSWORD}".encode()).decode()
    assert generate["headers"]["Proxy-Authorization"] == f"Basic {expected}"
    assert "Authorization" not in download["headers"]  # the key stays off other origins
    assert len(emu.requests("generate")) == 1
    assert not [line for line in log_lines if PROXY_PASSWORD in line]


async def test_http_proxy_and_no_proxy_from_the_environment(
    emu: Emulator, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    async with client_for(emu.base_url) as client:
        await client.generate("p")
    assert len(proxy.seen) == 1
    assert proxy.seen[0]["target"].startswith("http://127.0.0.1:")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with client_for(emu.base_url) as client:
        await client.generate("p")
    assert len(proxy.seen) == 1  # NO_PROXY: straight to the server
    assert len(emu.requests("generate")) == 2


async def test_an_unreachable_proxy_is_a_connection_error_without_its_password(
    emu: Emulator,
) -> None:
    with socket_closed_port() as port:
        async with client_for(
            emu.base_url, proxy=f"http://user:{PROXY_PASSWORD}@127.0.0.1:{port}"
        ) as client:
            with pytest.raises(APIConnectionError) as info:
                await client.generate("p")
    assert "proxy" in str(info.value)
    assert PROXY_PASSWORD not in str(info.value)
    assert info.value.__cause__ is None


@contextlib.contextmanager
def socket_closed_port() -> Any:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    yield port


async def test_https_through_a_proxy_is_tunnelled_and_the_key_stays_inside(
    tls_url: str, proxy: ForwardProxy, ca_bundle: Path
) -> None:
    async with client_for(tls_url, proxy=proxy.url(), ssl=ca_bundle) as client:
        r = await client.generate("p")
    assert r.data[0].b64_json == B64
    (connect,) = proxy.seen
    assert connect["method"] == "CONNECT"
    assert connect["target"] == tls_url.split("//", 1)[1].split("/", 1)[0]
    assert not any(TEST_KEY in value for value in connect["headers"].values())


# ------------------------------------------------------------------------ TLS


async def test_ssl_takes_a_ca_bundle_or_a_context(
    tls_url: str, ca_bundle: Path, ca: trustme.CA
) -> None:
    async with client_for(tls_url, ssl=ca_bundle) as client:
        assert (await client.generate("p")).data[0].b64_json == B64
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with client_for(tls_url, ssl=context) as client:
        assert (await client.generate("p")).data[0].b64_json == B64


async def test_ssl_cert_file_is_honoured(
    tls_url: str, ca_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_bundle))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    async with client_for(tls_url) as client:
        assert (await client.generate("p")).data[0].b64_json == B64


async def test_an_untrusted_certificate_is_a_connection_error_naming_the_cause(
    tls_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    async with client_for(tls_url) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate("p")
    message = str(info.value)
    assert "certificate" in message
    assert "not trusted" in message
    assert "ssl=" in message
    assert "unable to get local issuer certificate" in message  # OpenSSL's own reason
    assert info.value.__cause__ is None  # nothing chains back to aiohttp


def test_a_bad_ssl_option_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        client_for("https://127.0.0.1:1/v1", ssl=tmp_path / "nope.pem")
    assert info.value.param == "ssl"


# ---------------------------------------------------------------- own session


async def test_a_callers_session_is_used_and_never_closed(emu: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with client_for(emu.base_url, http_session=session) as client:
            await client.generate("p")
        assert not session.closed
        async with session.get(emu.blob_base_url + "/blobs/none.png") as r:
            assert r.status == 404  # still usable
        async with client_for(emu.base_url, http_session=session,
                              default_headers={"user-agent": "my-app/1"}) as client:
            await client.generate("p")
    first, second = emu.requests("generate")
    assert first.headers["User-Agent"].startswith("asyncimg/")
    assert CIMultiDict(second.headers).getall("User-Agent") == ["my-app/1"]
    with pytest.raises(ValidationError) as info:
        client_for(emu.base_url, http_session=session, proxy="http://127.0.0.1:1")
    assert info.value.param == "http_session"


async def test_a_callers_session_still_spends_the_rate_budget(emu: Emulator) -> None:
    from asyncimg import RateLimit

    async with aiohttp.ClientSession() as session, AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=RateLimit(images=5, per=60.0),
        max_retries=0, http_session=session,
    ) as client:
        emu.add_fault(Fault.drop())  # the server reads the request, then hangs up
        with pytest.raises(APIConnectionError):
            await client.generate("p", n=2)
        stats = client.limiter.stats()
    # Without our trace hooks on that session the permit is stamped at the start: the
    # server may have counted the request, so its images are not handed back.
    assert (stats.sent, stats.refunded) == (2, 0)
