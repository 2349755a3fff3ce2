"""Where requests go and what they carry, and the Azure options: pure, no loop."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from asyncimg import ValidationError
from asyncimg._azure import azure_base_url, azure_options
from asyncimg._config import (
    ProxyConfig,
    check_headers,
    check_query,
    merge_headers,
    redact_url,
    request_url,
    split_base_url,
    ssl_context,
)


def test_a_base_url_with_its_own_query_is_joined_before_the_query() -> None:
    base, query = split_base_url("https://gw.example/openai/deployments/d/?api-version=2024-02-01")
    assert base == "https://gw.example/openai/deployments/d"
    assert request_url(base, "/images/generations", query) == (
        "https://gw.example/openai/deployments/d/images/generations?api-version=2024-02-01"
    )
    assert request_url("https://api.example/v1", "/images/edits") == (
        "https://api.example/v1/images/edits"
    )


def test_default_and_extra_query_merge_later_winning() -> None:
    base, query = split_base_url("https://gw.example/v1?key=abc&tag=base")
    url = request_url(base, "/images/edits", query, {"tag": "client", "a": "1"}, {"a": "2"})
    assert url == "https://gw.example/v1/images/edits?key=abc&tag=client&a=2"
    assert check_query({"n": 1, "on": True, "s": "x y"}, "extra_query") == {
        "n": "1", "on": "true", "s": "x y"
    }
    assert request_url("https://h/v1", "/p", (), {"s": "x y&z"}) == "https://h/v1/p?s=x+y%26z"
    with pytest.raises(ValidationError) as info:
        check_query({"a": None}, "default_query")
    assert info.value.param == "default_query"
    with pytest.raises(ValidationError):
        check_query(["a"], "extra_query")


def test_a_model_placeholder_names_the_deployment_per_call() -> None:
    base = "https://r.example/openai/deployments/{model}"
    assert request_url(base, "/images/generations", (("api-version", "v"),), model="my img") == (
        "https://r.example/openai/deployments/my%20img/images/generations?api-version=v"
    )
    with pytest.raises(ValidationError) as info:
        request_url(base, "/images/generations", model=None)
    assert info.value.param == "model"


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValidationError) as info:
        split_base_url("ftp://user:secret@h/v1")
    assert info.value.param == "base_url"
    assert "secret" not in info.value.message


def test_headers_merge_case_insensitively() -> None:
    merged = merge_headers({"Authorization": "Bearer a", "X-A": "1"}, {"authorization": "B"})
    assert merged["AUTHORIZATION"] == "B"
    assert len(merged) == 2
    assert check_headers(None, "default_headers") == {}
    for bad in ({"X": 1}, {"X": "a\r\nInjected: yes"}, {"": "v"}, "X: y", {"X Bad": "v"},
                {"X": "\u2713"}, {"X": " padded"}):
        with pytest.raises(ValidationError) as info:
            check_headers(bad, "extra_headers")
        assert info.value.param == "extra_headers"


def test_redact_url_masks_only_the_password() -> None:
    assert redact_url("http://u:p4ss@proxy:3128") == "http://u:***@proxy:3128"
    assert redact_url("http://proxy:3128") == "http://proxy:3128"


def test_proxy_from_the_environment_as_the_sdk_reads_it() -> None:
    env = {
        "HTTPS_PROXY": "http://secure-proxy:3128",
        "http_proxy": "http://plain-proxy:3128",
        "NO_PROXY": "internal.example,127.0.0.1",
    }
    proxies = ProxyConfig.build(None, env)
    assert proxies.for_url("https://api.openai.com/v1/images") == "http://secure-proxy:3128"
    assert proxies.for_url("http://files.example/a.png") == "http://plain-proxy:3128"
    assert proxies.for_url("http://127.0.0.1:8089/v1") is None
    assert proxies.for_url("https://api.internal.example/v1") is None
    assert ProxyConfig.build(None, {"ALL_PROXY": "http://all:1"}).for_url("https://x/") == (
        "http://all:1"
    )
    assert ProxyConfig.build(None, {}).for_url("https://x/") is None
    explicit = ProxyConfig.build("http://p:1", env)
    assert explicit.for_url("http://127.0.0.1:8089/v1") == "http://p:1"  # explicit: every URL


def test_a_bad_proxy_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ValidationError) as info:
        ProxyConfig.build("socks5://u:hunter2@p:1080")
    assert info.value.param == "proxy"
    assert "hunter2" not in info.value.message


def test_ssl_context_from_a_context_a_bundle_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trustme

    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    own = ssl.create_default_context()
    assert ssl_context(own) is own
    from_bundle = ssl_context(bundle)
    assert from_bundle.get_ca_certs()  # the private CA, and only it
    assert len(from_bundle.get_ca_certs()) == 1
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    assert len(ssl_context(None).get_ca_certs()) == 1
    with pytest.raises(ValidationError) as info:
        ssl_context(tmp_path / "missing.pem")
    assert info.value.param == "ssl"
    with pytest.raises(ValidationError):
        ssl_context(True)


def test_azure_base_url() -> None:
    assert azure_base_url("https://r.openai.azure.com/", "img") == (
        "https://r.openai.azure.com/openai/deployments/img"
    )
    assert azure_base_url("https://r.openai.azure.com/openai", None) == (
        "https://r.openai.azure.com/openai/deployments/{model}"
    )
    with pytest.raises(ValidationError) as info:
        azure_base_url("r.openai.azure.com", "img")
    assert info.value.param == "endpoint"


def test_azure_options_from_arguments_and_the_sdk_s_environment() -> None:
    env = {
        "AZURE_OPENAI_ENDPOINT": "https://env.openai.azure.com",
        "AZURE_OPENAI_API_KEY": "az-key",
        "OPENAI_API_VERSION": "2025-04-01-preview",
    }
    options = azure_options(
        endpoint=None, deployment="img", api_version=None, api_key=None, token_provider=None,
        options={"default_headers": {"X-Gw": "1"}, "default_query": {"a": "b"}, "model": "m"},
        environ=env,
    )
    assert options == {
        "base_url": "https://env.openai.azure.com/openai/deployments/img",
        "api_key": "",
        "default_headers": {"X-Gw": "1", "api-key": "az-key"},
        "default_query": {"a": "b", "api-version": "2025-04-01-preview"},
        "token_provider": None,
        "model": "m",
    }

    def provider() -> str:
        return "tok"

    with_token = azure_options(
        endpoint="https://r.example", deployment=None, api_version="2024-02-01", api_key=None,
        token_provider=provider, options={}, environ=env,
    )
    assert "api-key" not in with_token["default_headers"]  # the env key is not used
    assert with_token["token_provider"] is provider


@pytest.mark.parametrize(
    ("kwargs", "env", "param"),
    [
        ({}, {"OPENAI_API_VERSION": "v", "AZURE_OPENAI_API_KEY": "k"}, "endpoint"),
        ({"endpoint": "https://r"}, {"AZURE_OPENAI_API_KEY": "k"}, "api_version"),
        ({"endpoint": "https://r", "api_version": "v"}, {}, "api_key"),
        ({"endpoint": "https://r", "api_version": "v", "api_key": "k",
          "token_provider": lambda: "t"}, {}, "api_key"),
        ({"endpoint": "https://r", "api_version": "v", "token_provider": "t"}, {},
         "token_provider"),
        ({"endpoint": "https://r", "api_version": "v", "api_key": "k", "deployment": ""}, {},
         "deployment"),
    ],
)
def test_azure_options_refuse_what_is_missing(
    kwargs: dict[str, object], env: dict[str, str], param: str
) -> None:
    args: dict[str, object] = {
        "endpoint": None, "deployment": None, "api_version": None, "api_key": None,
        "token_provider": None, **kwargs,
    }
    with pytest.raises(ValidationError) as info:
        azure_options(**args, options={}, environ=env)  # type: ignore[arg-type]
    assert info.value.param == param


def test_azure_options_refuse_a_base_url() -> None:
    with pytest.raises(ValidationError) as info:
        azure_options(
            endpoint="https://r", deployment="d", api_version="v", api_key="k",
            token_provider=None, options={"base_url": "https://other"}, environ={},
        )
    assert info.value.param == "base_url"
