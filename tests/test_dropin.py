"""Drop-in fidelity: outside a cancellation our clients are the vendor's, measured at the server where it matters."""

from __future__ import annotations

import gc
import inspect
import json
import os
import socket
import socketserver
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import cohere
import httpx
import httpx2
import openai
import pytest
import qdrant_client

import scoped_clients.anthropic as scoped_anthropic
import scoped_clients.cohere as scoped_cohere
import scoped_clients.openai as scoped_openai
import scoped_clients.qdrant as scoped_qdrant
from scoped_clients import RequestScope, scope_client
from scoped_clients.provider import LocalProvider

MESSAGES = [{"role": "user", "content": "hi"}]
#: openai 2.x is built on httpx, 3.x on httpx2 (both are supported)
OPENAI_HTTP: Any = httpx if openai.__version__.startswith("2.") else httpx2


def _scoped(http_client: Any) -> bool:
    return type(http_client._transport).__module__.startswith("scoped_clients")


# ------------------------------------------------------------------ identity and signatures


@pytest.mark.parametrize(
    ("ours", "vendor", "kwargs"),
    [
        (scoped_openai.AsyncOpenAI, openai.AsyncOpenAI, {"api_key": "x"}),
        (scoped_openai.OpenAI, openai.OpenAI, {"api_key": "x"}),
        (scoped_anthropic.AsyncAnthropic, anthropic.AsyncAnthropic, {"api_key": "x"}),
        (scoped_anthropic.Anthropic, anthropic.Anthropic, {"api_key": "x"}),
        (scoped_cohere.ClientV2, cohere.ClientV2, {"api_key": "x"}),
        (scoped_cohere.AsyncClientV2, cohere.AsyncClientV2, {"api_key": "x"}),
        (scoped_qdrant.QdrantClient, qdrant_client.QdrantClient, {"location": ":memory:"}),
    ],
)
def test_instances_are_the_vendors_class(ours: Any, vendor: type, kwargs: dict[str, Any]) -> None:
    client = ours(**kwargs)
    assert type(client) is vendor
    assert isinstance(client, ours)
    # the name is a subclass of the vendor's class (code that enumerates client classes counts it)
    assert issubclass(ours, vendor) and vendor in ours.__mro__ and ours in vendor.__subclasses__()
    assert not issubclass(vendor, ours)
    assert not isinstance(vendor(**kwargs), ours) or vendor is qdrant_client.QdrantClient  # local mode: no HTTP
    vendor_parameters = list(inspect.signature(vendor).parameters)
    our_parameters = list(inspect.signature(ours).parameters)
    assert our_parameters[: len(vendor_parameters)] == [p for p in vendor_parameters if p != "kwargs"] or set(
        vendor_parameters
    ) <= set(our_parameters)


def test_signature_adds_only_our_options() -> None:
    ours = inspect.signature(scoped_openai.AsyncOpenAI).parameters
    vendor = inspect.signature(openai.AsyncOpenAI).parameters
    assert [name for name in ours if name not in vendor] == ["always_stream", "finish_policy"]
    assert all(ours[name] == vendor[name] for name in vendor)


def test_copy_keeps_the_vendor_signature_and_takes_our_options() -> None:
    client = scoped_openai.AsyncOpenAI(api_key="x")
    assert inspect.signature(client.copy) == inspect.signature(openai.AsyncOpenAI(api_key="x").copy)
    copied = client.copy(finish_policy="finish_if_done", max_retries=0)
    assert copied.max_retries == 0 and isinstance(copied, scoped_openai.AsyncOpenAI)
    assert copied._client._transport.finish_policy == "finish_if_done"
    assert client._client._transport.finish_policy == "abort"  # the original is unchanged
    mine = OPENAI_HTTP.AsyncClient()
    transport = mine._transport
    again = copied.with_options(http_client=mine)
    assert isinstance(again, scoped_openai.AsyncOpenAI) and mine._transport is transport
    assert again._client._transport.finish_policy == "finish_if_done"  # a new http client keeps the options


def test_a_copy_has_the_same_state_as_its_client() -> None:
    """What the vendor's own tests compare: ``vars()`` of a client and of its copy (our copy method included)."""
    client = scoped_anthropic.Anthropic(api_key="x")
    copied = client.copy()
    assert vars(copied)["copy"] == vars(client)["copy"] and vars(copied)["with_options"] == vars(client)["with_options"]
    assert vars(copied)["copy"] != vars(scoped_openai.OpenAI(api_key="x"))["copy"]


def test_subclass_of_a_dropin_is_a_vendor_subclass_and_scoped() -> None:
    class Prepared(scoped_openai.OpenAI):
        def _prepare_request(self, request: Any) -> None:
            request.headers["x-prepared"] = "1"

    client = Prepared(api_key="x", always_stream=True)
    assert issubclass(type(client), openai.OpenAI) and isinstance(client, scoped_openai.OpenAI)
    assert client._client._transport.always_stream is True
    assert type(client.copy()) is Prepared


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="finish_policy must be"):
        scoped_openai.AsyncOpenAI(api_key="x", finish_policy="later")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="always_stream must be True or False"):
        scoped_anthropic.Anthropic(api_key="x", always_stream="yes")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'always_stream'"):
        scoped_cohere.ClientV2(api_key="x", always_stream=True)  # type: ignore[call-arg]


def test_scope_client_scopes_a_client_built_elsewhere() -> None:
    client = openai.AsyncOpenAI(api_key="x")
    default = client._client
    assert scope_client(client, finish_policy="finish_if_done") is client
    assert client._client is default and _scoped(default)  # the SDK's own client, scoped in place
    with pytest.raises(TypeError, match="takes a vendor SDK client"):
        scope_client(object())


# ------------------------------------------------------------------ the caller's HTTP client


@pytest.mark.parametrize("make", [scoped_openai.OpenAI, scoped_anthropic.Anthropic])
def test_callers_http_client_is_left_as_given(make: Any, provider: LocalProvider) -> None:
    http = OPENAI_HTTP if make is scoped_openai.OpenAI else httpx2
    mine = http.Client(headers={"x-team": "search"}, mounts={"http://example.test": http.HTTPTransport()})
    transport, mounts = mine._transport, dict(mine._mounts)
    base = provider.url + ("/v1" if make is scoped_openai.OpenAI else "")
    client = make(base_url=base, api_key="x", http_client=mine)
    assert mine._transport is transport and mine._mounts == mounts
    # the SDK gets a scoped copy that shares the caller's settings and connection pool
    assert type(client._client) is http.Client and client._client.headers is mine.headers
    with RequestScope() as scope:
        if make is scoped_openai.OpenAI:
            client.chat.completions.create(model="local-3", messages=MESSAGES)  # type: ignore[arg-type]
        else:
            client.messages.create(model="local-3", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
    assert provider.requests[0].headers["x-team"] == "search"  # the caller's settings reached the server
    assert [c.outcome for c in scope.report.calls] == ["completed"]  # type: ignore[union-attr]
    mine.get(provider.url + "/health")  # the caller's own client is not scoped: no record, no refusal
    client.close()
    assert mine.is_closed  # as the vendor's client does, closing it closes the client it was given


def test_wrong_http_client_type_gets_the_sdks_error() -> None:
    mine = OPENAI_HTTP.AsyncClient()
    with pytest.raises(TypeError, match="Invalid `http_client` argument"):
        scoped_openai.OpenAI(api_key="x", http_client=mine)
    assert type(mine._transport) is OPENAI_HTTP.AsyncHTTPTransport


def test_sdk_default_client_is_kept_and_closes_when_collected(provider: LocalProvider) -> None:
    client = scoped_openai.OpenAI(base_url=provider.url + "/v1", api_key="x")
    assert type(client._client).__name__ == "SyncHttpxClientWrapper"  # the SDK's own, not one of ours
    client.chat.completions.create(model="local-3", messages=MESSAGES)  # type: ignore[arg-type]
    gc.collect()  # earlier tests' garbage first: the window below sees this client's end only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del client
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_mocked_responses_are_recorded_completed() -> None:
    def handler(request: Any) -> Any:
        return OPENAI_HTTP.Response(200, json=_chat_completion())

    mock = OPENAI_HTTP.Client(transport=OPENAI_HTTP.MockTransport(handler))
    client = scoped_openai.OpenAI(api_key="x", http_client=mock)
    with RequestScope() as scope:
        client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "completed" and not record.orphan


def _chat_completion() -> dict[str, Any]:
    message = {"role": "assistant", "content": "hello"}
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


# ------------------------------------------------------------------ anthropic credentials


@pytest.fixture
def anthropic_profile(tmp_path: Path, provider: LocalProvider, monkeypatch: pytest.MonkeyPatch) -> Path:
    for variable in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "configs").mkdir()
    (tmp_path / "credentials").mkdir()
    config = {"authentication": {"type": "user_oauth"}, "base_url": provider.url}
    (tmp_path / "configs" / "default.json").write_text(json.dumps(config))
    secret = tmp_path / "credentials" / "default.json"
    secret.write_text(json.dumps({"access_token": "profile-token", "expires_at": int(time.time()) + 3600}))
    os.chmod(secret, 0o600)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))
    return tmp_path


def test_anthropic_credential_profile_authenticates(anthropic_profile: Path, provider: LocalProvider) -> None:
    client = scoped_anthropic.Anthropic()
    copied = client.copy(max_retries=0)
    assert copied.credentials is client.credentials is not None
    with RequestScope() as scope:
        client.messages.create(model="local-3", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
        copied.messages.create(model="local-3", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
    assert [r.headers.get("authorization") for r in provider.requests] == ["Bearer profile-token"] * 2
    assert [c.outcome for c in scope.report.calls] == ["completed", "completed"]  # type: ignore[union-attr]
    client.close()


# ------------------------------------------------------------------ qdrant and cohere


class _Proxy(socketserver.ThreadingTCPServer):
    """A forward HTTP proxy stand-in: records each request line and answers like Qdrant."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.lines: list[str] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: _Proxy = self.server  # type: ignore[assignment]
        while True:
            line = self.rfile.readline().decode().strip()
            if not line:
                return
            server.lines.append(line)
            length = 0
            while (header := self.rfile.readline().decode().strip()) != "":
                if header.lower().startswith("content-length:"):
                    length = int(header.split(":", 1)[1])
            self.rfile.read(length)
            body = json.dumps({"result": {"collections": []}, "status": "ok", "time": 0.0}).encode()
            head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            self.wfile.write(head.encode() + body)


@pytest.fixture
def proxy() -> Iterator[_Proxy]:
    yield from _serve(_Proxy())


@pytest.fixture
def tls_server() -> Iterator[_Proxy]:
    """The same stand-in over TLS, with a certificate from a CA nobody trusts."""
    import ssl

    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = _Proxy()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from _serve(server)


def _serve(server: _Proxy) -> Iterator[_Proxy]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_qdrant_uses_proxies_from_the_environment(proxy: _Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = scoped_qdrant.QdrantClient(url="http://qdrant.invalid:6333", check_compatibility=False)
    assert "transport" not in client.init_options
    with RequestScope() as scope:
        client.get_collections()
    assert proxy.lines == ["GET http://qdrant.invalid:6333/collections HTTP/1.1"]  # it went through the proxy
    assert [(c.provider, c.outcome) for c in scope.report.calls] == [("qdrant", "completed")]  # type: ignore[union-attr]
    copy = scoped_qdrant.QdrantClient(**client.init_options)
    assert isinstance(copy, scoped_qdrant.QdrantClient)


def test_qdrant_verify_false_is_honoured(tls_server: _Proxy) -> None:
    url = f"https://127.0.0.1:{tls_server.server_address[1]}"
    client = scoped_qdrant.QdrantClient(url=url, verify=False, check_compatibility=False)
    with RequestScope() as scope:
        client.get_collections()
    assert tls_server.lines == ["GET /collections HTTP/1.1"]
    assert [c.outcome for c in scope.report.calls] == ["completed"]  # type: ignore[union-attr]
    strict = scoped_qdrant.QdrantClient(url=url, check_compatibility=False)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        strict.get_collections()


def test_qdrant_explicit_proxy_is_scoped(proxy: _Proxy) -> None:
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    client = scoped_qdrant.QdrantClient(url="http://qdrant.invalid:6333", proxy=url, check_compatibility=False)
    with RequestScope() as scope:
        client.get_collections()
    assert len(proxy.lines) == 1
    assert [c.provider for c in scope.report.calls] == ["qdrant"]  # type: ignore[union-attr]


def test_qdrant_local_mode_accepts_prefer_grpc() -> None:
    client = scoped_qdrant.QdrantClient(":memory:", prefer_grpc=True)
    assert client.get_collections().collections == []


def test_cohere_keeps_its_defaults_and_leaves_the_callers_client() -> None:
    client = scoped_cohere.ClientV2(api_key="x")
    vendor = cohere.ClientV2(api_key="x")
    assert client._client_wrapper.get_timeout() == vendor._client_wrapper.get_timeout() == 300
    ours_pool = client._client_wrapper.httpx_client.httpx_client._transport.transport._pool
    vendor_pool = vendor._client_wrapper.httpx_client.httpx_client._transport._pool
    assert ours_pool._socket_options == vendor_pool._socket_options  # TCP keepalive kept
    assert any(option[1] == socket.SO_KEEPALIVE for option in ours_pool._socket_options)
    mine = httpx.Client(timeout=12.0)
    transport = mine._transport
    with_mine = scoped_cohere.ClientV2(api_key="x", httpx_client=mine)
    assert mine._transport is transport
    assert _scoped(with_mine._client_wrapper.httpx_client.httpx_client)


class _SelfClosing(OPENAI_HTTP.Client):  # type: ignore[misc, name-defined]
    """Like the frameworks' cached clients: closes itself when garbage-collected."""

    def __del__(self) -> None:
        self.close()


def test_a_shared_self_closing_client_outlives_the_sdk_copy() -> None:
    shared = _SelfClosing()
    client = scoped_openai.OpenAI(api_key="x", http_client=shared)
    assert isinstance(client._client, _SelfClosing) and client._client is not shared
    del client
    gc.collect()
    assert not shared.is_closed  # collecting the SDK's scoped copy did not close the caller's shared client
    shared.close()


def test_scope_client_imports_the_dropins_it_needs() -> None:
    client = anthropic.Anthropic(api_key="x")
    assert scope_client(client) is client and isinstance(client, scoped_anthropic.Anthropic)
