"""Tests for the ReplyTo syntax and the JSON callback sender."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import pydantic
import pytest
from aiohttp import web
from hypothesis import assume, given
from hypothesis import strategies as st

from asyncjobs import AsyncCommand, BackgroundJobs, JobOptions, JobState, current_job
from asyncjobs.exceptions import ConfigurationError, ReplyToError, SerializationError
from asyncjobs.replyto import ReplyTo, send_json_callback

URL = "https://example.com/hooks/done"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------- parsing

VALID = [
    pytest.param(URL, (), {}, "POST", URL, {}, id="plain-url"),
    pytest.param(
        "http://127.0.0.1:8080/cb?who=a@b",
        (),
        {},
        "POST",
        "http://127.0.0.1:8080/cb?who=a@b",
        {},
        id="plain-url-with-at-in-query",
    ),
    pytest.param(
        "HTTPS://example.com/cb", (), {}, "POST", "HTTPS://example.com/cb", {}, id="upper-scheme"
    ),
    pytest.param(f"PUT {URL}", (), {}, "PUT", URL, {}, id="method-put"),
    pytest.param(f"PATCH {URL}", (), {}, "PATCH", URL, {}, id="method-patch"),
    pytest.param(f"GET {URL}", (), {}, "GET", URL, {}, id="method-get"),
    pytest.param(
        "us%40er:p%3Ass@https://x",
        (),
        {},
        "POST",
        "https://x",
        {"Authorization": "Basic dXNAZXI6cDpzcw=="},  # us@er:p:ss
        id="basic-encoded",
    ),
    pytest.param(
        "user:@https://x",
        (),
        {},
        "POST",
        "https://x",
        {"Authorization": "Basic dXNlcjo="},  # user:
        id="basic-empty-password",
    ),
    pytest.param(
        "http.X-Api-Key:abc@https://x/cb",
        (),
        {},
        "POST",
        "https://x/cb",
        {"X-Api-Key": "abc"},
        id="header",
    ),
    pytest.param(
        "http.X%2DApi%2DKey:a%20b%2Fc%40d@https://x",
        (),
        {},
        "POST",
        "https://x",
        {"X-Api-Key": "a b/c@d"},
        id="header-encoded",
    ),
    pytest.param(
        "tok.en-1_~@https://x",
        (),
        {},
        "POST",
        "https://x",
        {"Authorization": "Bearer tok.en-1_~"},
        id="bearer",
    ),
    pytest.param(
        "a%2Bb%2F%3D@https://x",
        (),
        {},
        "POST",
        "https://x",
        {"Authorization": "Bearer a+b/="},
        id="bearer-encoded",
    ),
    pytest.param(
        "%24notenv@https://x",
        (),
        {},
        "POST",
        "https://x",
        {"Authorization": "Bearer $notenv"},
        id="bearer-literal-dollar",
    ),
    pytest.param(
        "PUT tok@https://x/a",
        (),
        {},
        "PUT",
        "https://x/a",
        {"Authorization": "Bearer tok"},
        id="method-and-bearer",
    ),
    pytest.param(
        "$TOKEN@https://x",
        ("TOKEN",),
        {"TOKEN": "s3cret"},
        "POST",
        "https://x",
        {"Authorization": "Bearer s3cret"},
        id="bearer-env",
    ),
    pytest.param(
        "bot:$PW@https://x",
        ["PW"],
        {"PW": "p@ss:w"},
        "POST",
        "https://x",
        {"Authorization": "Basic Ym90OnBAc3M6dw=="},  # bot:p@ss:w
        id="password-env",
    ),
    pytest.param(
        "HTTP.X-Api-Key:k3y@https://x",
        (),
        {},
        "POST",
        "https://x",
        {"X-Api-Key": "k3y"},
        id="header-prefix-any-case",
    ),
    pytest.param(
        "PATCH http.X-Api-Key:$KEY@https://x",
        {"KEY"},
        {"KEY": "k3y value"},
        "PATCH",
        "https://x",
        {"X-Api-Key": "k3y value"},
        id="header-value-env",
    ),
]


@pytest.mark.parametrize(("text", "allowed", "environ", "method", "url", "headers"), VALID)
def test_parse_valid(
    text: str,
    allowed: tuple[str, ...],
    environ: dict[str, str],
    method: str,
    url: str,
    headers: dict[str, str],
) -> None:
    reply = ReplyTo.parse(text, allowed_env=allowed, environ=environ)
    assert reply.method == method
    assert reply.url == url
    assert dict(reply.headers) == headers


INVALID = [
    pytest.param("", (), {}, "empty", id="empty"),
    pytest.param("   ", (), {}, "empty", id="only-spaces"),
    pytest.param(f" {URL}", (), {}, "whitespace", id="leading-space"),
    pytest.param(f"{URL}\t", (), {}, "whitespace", id="trailing-tab"),
    pytest.param("https://x /y", (), {}, "whitespace", id="inner-space"),
    pytest.param(f"POST  {URL}", (), {}, "whitespace", id="two-spaces-after-method"),
    pytest.param("https://x/\x00", (), {}, "control", id="control-char"),
    pytest.param("POST ", (), {}, "method 'POST' but no URL", id="method-only"),
    pytest.param("PATCH", (), {}, "must start with http:// or https://", id="method-no-space"),
    pytest.param("@", (), {}, "nothing after '@'", id="lone-at"),
    pytest.param("tok@", (), {}, "nothing after '@'", id="token-at"),
    pytest.param("@https://x", (), {}, "empty prefix", id="empty-prefix"),
    pytest.param("ftp://x", (), {}, "unknown scheme 'ftp'", id="ftp"),
    pytest.param("tok@ftp://x", (), {}, "unknown scheme 'ftp'", id="token-ftp"),
    pytest.param("example.com/cb", (), {}, "must start with http://", id="no-scheme"),
    pytest.param("tok@example.com", (), {}, "must start with http://", id="token-no-scheme"),
    pytest.param("https://", (), {}, "no host", id="no-host"),
    pytest.param("https://x:99999/", (), {}, "invalid", id="bad-port"),
    pytest.param("https://u:s3cret@x/", (), {}, "contains credentials", id="userinfo-in-url"),
    pytest.param("$@https://x", (), {}, "bare '$'", id="bare-dollar-token"),
    pytest.param("u:$@https://x", (), {}, "bare '$'", id="bare-dollar-password"),
    pytest.param("http.X-Key:$@https://x", (), {}, "bare '$'", id="bare-dollar-header"),
    pytest.param(
        "$1BAD@https://x", ("1BAD",), {"1BAD": "v"}, "no environment variable", id="bad-env-name"
    ),
    # A literal secret that forgot its %24 is not echoed back.
    pytest.param("$my-s3cret!@https://x", (), {}, "%24", id="dollar-secret-token"),
    pytest.param("u:$s3cret.pw@https://x", (), {}, "%24", id="dollar-secret-password"),
    pytest.param("http.X-Key:$s3cret-v@https://x", (), {}, "%24", id="dollar-secret-header"),
    pytest.param(
        "$TOKEN@https://x", (), {"TOKEN": "s3cret"}, "not in allowed_env", id="env-not-allowed"
    ),
    pytest.param(
        "u:$PW@https://x", ("TOKEN",), {"PW": "s3cret"}, "not in allowed_env", id="pw-not-allowed"
    ),
    pytest.param("$TOKEN@https://x", ("TOKEN",), {}, "unset", id="env-unset"),
    pytest.param("$TOKEN@https://x", ("TOKEN",), {"TOKEN": ""}, "empty", id="env-empty"),
    pytest.param(
        "$TOKEN@https://x", ("TOKEN",), {"TOKEN": "s3cret\n"}, "not allowed", id="env-newline"
    ),
    pytest.param(":s3cret@https://x", (), {}, "empty user name", id="empty-user"),
    pytest.param("a%3Ab:s3cret@https://x", (), {}, "may not contain ':'", id="colon-in-user"),
    pytest.param("http.X-Key@https://x", (), {}, "http.Header-Name:value", id="header-no-colon"),
    pytest.param("http.:s3cret@https://x", (), {}, "empty header name", id="header-no-name"),
    pytest.param("http.X%20Key:v@https://x", (), {}, "not a valid HTTP header", id="bad-name"),
    pytest.param("http.X-Key:@https://x", (), {}, "empty value", id="header-empty-value"),
    pytest.param(
        "http.X-Key:s3cret%0D%0AEvil:1@https://x", (), {}, "not allowed", id="header-injection"
    ),
    pytest.param("http.Host:evil@https://x", (), {}, "may not set the Host", id="host-header"),
    pytest.param("s3cret%ZZ@https://x", (), {}, "malformed percent", id="bad-escape"),
    pytest.param("s3cret%FF@https://x", (), {}, "UTF-8", id="bad-utf8"),
    pytest.param("s3cret%20x@https://x", (), {}, "not allowed", id="space-in-token"),
]


@pytest.mark.parametrize(("text", "allowed", "environ", "message"), INVALID)
def test_parse_invalid(
    text: str, allowed: tuple[str, ...], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ReplyToError, match="ReplyTo") as excinfo:
        ReplyTo.parse(text, allowed_env=allowed, environ=environ)
    assert message in str(excinfo.value)
    # Errors end up in logs and job records: they must never repeat a secret.
    assert "s3cret" not in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_parse_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOBS_TEST_TOKEN", "from-os")
    reply = ReplyTo.parse("$ASYNCJOBS_TEST_TOKEN@https://x", allowed_env=["ASYNCJOBS_TEST_TOKEN"])
    assert reply.headers == {"Authorization": "Bearer from-os"}


def test_allowed_env_as_string_is_rejected() -> None:
    # "TOKEN" as a string would make "TOK" pass an `in` check.
    with pytest.raises(TypeError, match="not a string"):
        ReplyTo.parse("$TOK@https://x", allowed_env="TOKEN", environ={"TOK": "v"})


def test_parse_rejects_non_string() -> None:
    with pytest.raises(ReplyToError, match="must be a string"):
        ReplyTo.parse(None)  # type: ignore[arg-type]


@given(
    user=st.text(st.characters(codec="utf-8"), min_size=1),
    password=st.text(st.characters(codec="utf-8")),
)
def test_basic_auth_round_trips_any_text(user: str, password: str) -> None:
    assume(":" not in user)
    encoded_user = quote(user, safe="")
    assume(not encoded_user.startswith("http."))  # that spelling means a header prefix
    reply = ReplyTo.parse(f"{encoded_user}:{quote(password, safe='')}@https://x")
    scheme, _, credentials = reply.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(credentials).decode() == f"{user}:{password}"


def test_repr_masks_secrets() -> None:
    env = {"PW": "s3cret-pw"}
    bearer = ReplyTo.parse("s3cret-token@https://x/cb")
    basic = ReplyTo.parse("PUT bob:$PW@https://x/cb", allowed_env=["PW"], environ=env)
    header = ReplyTo.parse("http.X-Api-Key:s3cret-key@https://x/cb")

    assert repr(bearer) == (
        "ReplyTo(method='POST', url='https://x/cb', headers={'Authorization': 'Bearer ***'})"
    )
    assert repr(basic) == (
        "ReplyTo(method='PUT', url='https://x/cb', headers={'Authorization': 'Basic ***'})"
    )
    assert repr(header) == (
        "ReplyTo(method='POST', url='https://x/cb', headers={'X-Api-Key': '***'})"
    )
    basic_b64 = base64.b64encode(b"bob:s3cret-pw").decode()
    for reply in (bearer, basic, header):
        for text in (repr(reply), str(reply), f"{reply}", repr([reply])):
            assert "s3cret" not in text
            assert basic_b64 not in text


def test_replyto_is_immutable_and_hashable() -> None:
    a = ReplyTo.parse("tok@https://x")
    b = ReplyTo.parse("tok@https://x")
    assert a == b
    assert hash(a) == hash(b)
    assert a != ReplyTo.parse("other@https://x")
    with pytest.raises(TypeError):
        a.headers["Authorization"] = "Bearer changed"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.url = "https://elsewhere"  # type: ignore[misc]


# ----------------------------------------------------------------- real HTTP server


@dataclasses.dataclass
class Received:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


@dataclasses.dataclass
class Server:
    base: str
    received: list[Received]


@pytest.fixture
async def server(anyio_backend: str) -> AsyncIterator[Server]:
    received: list[Received] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        received.append(
            Received(request.method, request.path, dict(request.headers), await request.read())
        )
        if request.path == "/fail":
            return web.Response(status=500, text="boom")
        if request.path == "/redirect":
            return web.Response(status=307, headers={"Location": "/elsewhere"})
        if request.path in ("/endless", "/trickle"):
            # A body that would never end: fast, or a byte at a time.
            streamed = web.StreamResponse()
            await streamed.prepare(request)
            fast = request.path == "/endless"
            for _ in range(2_000):
                await streamed.write(b"x" * 65_536 if fast else b"x")
                await anyio.sleep(0 if fast else 0.2)
            return streamed
        if request.path == "/gzip":
            compressed = web.json_response({"ok": "compressed"})
            compressed.enable_compression(web.ContentCoding.gzip)
            return compressed
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield Server(f"http://{host}:{port}", received)
    finally:
        await runner.cleanup()


@dataclasses.dataclass
class Result:
    job_id: int
    tags: list[str]


class PydanticResult(pydantic.BaseModel):
    job_id: int
    ratio: float


@pytest.mark.anyio
async def test_bearer_post_with_dataclass_body(server: Server) -> None:
    response = await send_json_callback(
        f"tok-123@{server.base}/hooks/done", Result(job_id=7, tags=["a", "b"])
    )
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    [req] = server.received
    assert req.method == "POST"
    assert req.path == "/hooks/done"
    assert req.headers["Authorization"] == "Bearer tok-123"
    assert req.headers["Content-Type"] == "application/json"
    assert json.loads(req.body) == {"job_id": 7, "tags": ["a", "b"]}


@pytest.mark.anyio
async def test_basic_put_with_env_password_and_pydantic_body(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCJOBS_TEST_PW", "p@ss:word")
    await send_json_callback(
        f"PUT us%40er:$ASYNCJOBS_TEST_PW@{server.base}/jobs/7",
        PydanticResult(job_id=7, ratio=0.5),
        allowed_env=["ASYNCJOBS_TEST_PW"],
    )
    [req] = server.received
    assert req.method == "PUT"
    assert req.path == "/jobs/7"
    expected = base64.b64encode(b"us@er:p@ss:word").decode()
    assert req.headers["Authorization"] == f"Basic {expected}"
    assert json.loads(req.body) == {"job_id": 7, "ratio": 0.5}


@pytest.mark.anyio
async def test_custom_header_with_passed_client(server: Server) -> None:
    # The client's own auth must not be sent to a job-chosen URL.
    async with httpx.AsyncClient(auth=("shared", "client-secret")) as client:
        response = await send_json_callback(
            f"PATCH http.X-Api-Key:k%20ey@{server.base}/cb", [1, "two", None], client=client
        )
        assert response.status_code == 200
        assert not client.is_closed
    [req] = server.received
    assert req.method == "PATCH"
    assert req.headers["X-Api-Key"] == "k ey"
    assert "Authorization" not in req.headers
    assert json.loads(req.body) == [1, "two", None]


@pytest.mark.anyio
async def test_content_type_can_be_overridden_without_duplicates(server: Server) -> None:
    await send_json_callback(
        f"http.content-type:application%2Fvnd.x%2Bjson@{server.base}/cb", {"a": 1}
    )
    [req] = server.received
    assert req.headers["Content-Type"] == "application/vnd.x+json"
    assert json.loads(req.body) == {"a": 1}


@pytest.mark.anyio
async def test_server_error_raises(server: Server) -> None:
    with pytest.raises(httpx.HTTPStatusError) as excinfo:
        await send_json_callback(f"{server.base}/fail", {"done": True})
    assert excinfo.value.response.status_code == 500
    [req] = server.received
    assert req.path == "/fail"
    assert json.loads(req.body) == {"done": True}


@pytest.mark.anyio
async def test_redirect_is_not_followed(server: Server) -> None:
    with pytest.raises(httpx.HTTPStatusError) as excinfo:
        await send_json_callback(f"http.X-Api-Key:k@{server.base}/redirect", {})
    assert excinfo.value.response.status_code == 307
    assert [req.path for req in server.received] == ["/redirect"]


@pytest.mark.anyio
async def test_bad_reply_to_sends_nothing(server: Server) -> None:
    with pytest.raises(ReplyToError, match="not in allowed_env"):
        await send_json_callback(f"$HOME@{server.base}/cb", {})
    with pytest.raises(SerializationError, match="cannot be encoded"):
        await send_json_callback(f"{server.base}/cb", {"x": object()})
    assert server.received == []


@pytest.mark.anyio
async def test_a_body_that_never_ends_is_not_read_on(server: Server) -> None:
    """The callback was taken (its status says so); what the host sends after that is no
    reason to hold the job, nor its memory."""
    with anyio.fail_after(20):
        response = await send_json_callback(
            f"{server.base}/endless", {"a": 1}, max_response_bytes=100_000
        )
    assert response.status_code == 200
    with pytest.raises(httpx.ResponseNotRead):
        response.content  # noqa: B018
    assert [req.path for req in server.received] == ["/endless"]


@pytest.mark.anyio
async def test_timeout_bounds_the_whole_exchange(server: Server) -> None:
    """A host that answers a byte at a time never lets one read time out; the timeout is the
    whole exchange's, and a transport error the job may retry."""
    with anyio.fail_after(20), pytest.raises(httpx.TimeoutException, match="longer than 1"):
        await send_json_callback(f"{server.base}/trickle", {"a": 1}, timeout=1.0)


@pytest.mark.anyio
async def test_a_short_body_is_kept_and_decoded(server: Server) -> None:
    response = await send_json_callback(f"{server.base}/gzip", {"a": 1})
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.json() == {"ok": "compressed"}
    with pytest.raises(httpx.HTTPStatusError) as excinfo:
        await send_json_callback(f"{server.base}/fail", {})
    assert excinfo.value.response.text == "boom"


@pytest.mark.anyio
async def test_a_shared_clients_credentials_stay_home(server: Server) -> None:
    """Default headers apply, but not the credentials a client would add: the host is the
    job's choice. A ReplyTo's own credentials are sent."""
    async with httpx.AsyncClient(
        headers={"Authorization": "Bearer internal", "X-Trace": "t1"},
        cookies={"session": "internal"},
    ) as client:
        await send_json_callback(f"{server.base}/plain", {}, client=client)
        await send_json_callback(f"own-token@{server.base}/token", {}, client=client)
        await send_json_callback(f"http.Cookie:c%3D1@{server.base}/cookie", {}, client=client)
    plain, token, cookie = server.received
    assert plain.headers["X-Trace"] == "t1"
    assert "Authorization" not in plain.headers and "Cookie" not in plain.headers
    assert token.headers["Authorization"] == "Bearer own-token"
    assert cookie.headers["Cookie"] == "c=1"


class _DumpFails(pydantic.BaseModel):
    def model_dump(self, **kwargs: object) -> dict[str, object]:  # type: ignore[override]
        raise RuntimeError("no dump")


@pytest.mark.anyio
async def test_a_body_that_cannot_be_encoded_is_a_serialization_error(server: Server) -> None:
    """Another attempt would fail alike (SerializationError fails a job at once)."""
    cycle: list[object] = []
    cycle.append(cycle)
    for body in (cycle, _DumpFails(), {"x": object()}):
        with pytest.raises(SerializationError, match="cannot be encoded"):
            await send_json_callback(f"{server.base}/cb", body)
    assert server.received == []


@pytest.mark.anyio
async def test_accepts_parsed_replyto(server: Server) -> None:
    reply = ReplyTo.parse(f"$T@{server.base}/cb", allowed_env=["T"], environ={"T": "from-mapping"})
    await send_json_callback(reply, "done")
    [req] = server.received
    assert req.headers["Authorization"] == "Bearer from-mapping"
    assert json.loads(req.body) == "done"


class _ReplyWithSum(AsyncCommand[Result]):
    async def run(self, request: Result) -> None:
        await send_json_callback(current_job().reply_to or "", {"sum": sum(map(int, request.tags))})


@pytest.mark.anyio
async def test_a_job_reads_the_environment_variables_its_app_allows(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ASYNCJOBS_TEST_TOKEN", "from-env")
    options = JobOptions(reply_to=f"$ASYNCJOBS_TEST_TOKEN@{server.base}/cb")
    app = BackgroundJobs(
        f"sqlite:///{tmp_path / 'jobs.db'}",
        commands=[_ReplyWithSum],
        reply_to_env=["ASYNCJOBS_TEST_TOKEN"],
    )
    async with app:
        await app.run_command_async(_ReplyWithSum, Result(1, ["2", "3"]), options)
        ref = await app.enqueue_command(_ReplyWithSum, Result(2, ["4"]), options)
        assert (await app.wait_for_job(ref.id)).state is JobState.COMPLETED
    assert [(r.headers["Authorization"], json.loads(r.body)) for r in server.received] == [
        ("Bearer from-env", {"sum": 5}),
        ("Bearer from-env", {"sum": 4}),
    ]
    other = BackgroundJobs(f"sqlite:///{tmp_path / 'other.db'}", commands=[_ReplyWithSum])
    async with other:
        with pytest.raises(ReplyToError, match="not in allowed_env"):
            await other.run_command_async(_ReplyWithSum, Result(3, []), options)
    assert len(server.received) == 2
    with pytest.raises(ConfigurationError, match="collection of variable names"):
        BackgroundJobs("sqlite:///:memory:", reply_to_env="ASYNCJOBS_TEST_TOKEN")


@pytest.mark.anyio
async def test_a_reply_to_naming_a_variable_the_app_does_not_allow_fails_the_job_once(
    server: Server, tmp_path: Path
) -> None:
    """The variable is read by the process that sends (so enqueue takes the name), and another
    attempt in that process would fail alike: the job fails at once, its work done once."""
    options = JobOptions(reply_to=f"$ASYNCJOBS_TEST_UNLISTED@{server.base}/cb", retry_limit=3)
    app = BackgroundJobs(f"sqlite:///{tmp_path / 'jobs.db'}", commands=[_ReplyWithSum])
    async with app:
        ref = await app.enqueue_command(_ReplyWithSum, Result(1, ["2"]), options)
        result = await app.wait_for_job(ref.id)
    assert result.state is JobState.FAILED and result.summary.attempts == 1
    assert result.summary.error_code == "ReplyToError" and server.received == []
