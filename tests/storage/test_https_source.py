"""The https source against hostile servers: where the bearer token goes after redirects,
which redirects are followed, and what a nonsense Content-Length or a short file does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from pydantic import SecretStr

from gpuflow.core.errors import IntegrityError, StoreAccessError, StoreError
from gpuflow.core.request import ModelRef
from gpuflow.storage.https import HttpSource
from gpuflow.storage.model_cache import ModelCache
from tests.support.http_answers import AnswerServer, file_body, redirect_to, self_signed_context

pytestmark = pytest.mark.integration

TOKEN = "hf_TOKEN_for_the_hub_only_3141"
DATA = b"weights" * 1000


@pytest.fixture
def servers() -> Iterator[list[AnswerServer]]:
    started: list[AnswerServer] = []
    yield started
    for server in started:
        server.stop()


def _serve(servers: list[AnswerServer], *args: object, **kwargs: object) -> AnswerServer:
    server = AnswerServer(*args, **kwargs)  # type: ignore[arg-type]
    servers.append(server)
    return server


def test_the_token_never_follows_a_redirect_to_another_host(
    tmp_path: Path, servers: list[AnswerServer]
) -> None:
    tls = self_signed_context(tmp_path)
    cdn = _serve(servers, file_body(DATA), tls=tls, host="localhost")
    hub = _serve(servers, redirect_to(cdn.url), tls=tls)
    source = HttpSource(
        bearer_token=SecretStr(TOKEN), verify_tls=False, allow_private_redirects=True
    )

    source.download(f"{hub.url}/m/weights.bin", tmp_path / "weights.bin")

    assert (tmp_path / "weights.bin").read_bytes() == DATA
    assert {auth for _, _, auth in hub.seen} == {f"Bearer {TOKEN}"}
    assert [auth for _, _, auth in cdn.seen] == [None, None]  # the HEAD and the GET


def test_a_token_is_never_sent_over_plain_http(tmp_path: Path, servers: list[AnswerServer]) -> None:
    server = _serve(servers, file_body(DATA))
    source = HttpSource(bearer_token=SecretStr(TOKEN))
    with pytest.raises(StoreAccessError, match="only sent over https"):
        source.download(f"{server.url}/m/weights.bin", tmp_path / "weights.bin")
    assert server.seen == []


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data", "http://10.1.2.3", "http://[::1]:9"],
)
def test_redirects_to_internal_addresses_are_refused_by_default(
    tmp_path: Path, servers: list[AnswerServer], target: str
) -> None:
    hub = _serve(servers, redirect_to(target))
    with pytest.raises(StoreAccessError, match="allow_private_redirects") as refused:
        HttpSource().download(f"{hub.url}/m/weights.bin", tmp_path / "weights.bin")
    assert target.split("//")[1].split("/")[0].strip("[]").split("]")[0] in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_a_loopback_mirror_is_followed_when_allowed(
    tmp_path: Path, servers: list[AnswerServer]
) -> None:
    mirror = _serve(servers, file_body(DATA), host="localhost")
    hub = _serve(servers, redirect_to(mirror.url))
    with pytest.raises(StoreAccessError, match="private address"):
        HttpSource().download(f"{hub.url}/w.bin", tmp_path / "refused.bin")
    HttpSource(allow_private_redirects=True).download(f"{hub.url}/w.bin", tmp_path / "w.bin")
    assert (tmp_path / "w.bin").read_bytes() == DATA


@pytest.mark.parametrize("length", ["-5", "12abc", str(2**60), "", "1e3", "0x10"])
def test_a_nonsense_content_length_is_an_integrity_error(
    tmp_path: Path, servers: list[AnswerServer], length: str
) -> None:
    server = _serve(servers, file_body(DATA, length=length))
    with pytest.raises(IntegrityError, match="Content-Length"):
        HttpSource().download(f"{server.url}/w.bin", tmp_path / "w.bin")
    with pytest.raises(IntegrityError, match="Content-Length"):
        HttpSource().stat(f"{server.url}/w.bin")
    assert list(tmp_path.iterdir()) == []


def test_a_file_shorter_than_its_index_says_is_never_published(
    tmp_path: Path, servers: list[AnswerServer]
) -> None:
    index = json.dumps({"files": [{"path": "w.bin", "size": len(DATA) + 10}]}).encode()

    def answer(handler: BaseHTTPRequestHandler) -> None:
        file_body(index if handler.path.endswith("gpuflow-manifest.json") else DATA)(handler)

    server = _serve(servers, answer)
    cache = ModelCache(root=tmp_path / "models")
    model = ModelRef(name="m", revision="v1")
    with pytest.raises(IntegrityError, match="says 7010 bytes, 7000 arrived"):
        cache.ensure(model, HttpSource(), f"{server.url}/m")
    assert not cache.is_ready(model)


def test_a_redirect_loop_ends_with_a_clear_error(
    tmp_path: Path, servers: list[AnswerServer]
) -> None:
    def to_itself(handler: BaseHTTPRequestHandler) -> None:
        host = handler.headers["Host"]  # this server itself
        redirect_to(f"http://{host}")(handler)

    loop = _serve(servers, to_itself)
    with pytest.raises(StoreError, match="more than 5 redirects"):
        HttpSource().stat(f"{loop.url}/w.bin")
