"""Clients that misbehave at the socket level, against a real daemon process on a real port:
slow bodies, dribbled headers (slowloris), idle connections, oversized headers, endless chunked
bodies. None of them may hold a connection for long, cost memory past the limits, or stop the
daemon answering everyone else."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from support import TINY_MODEL, Daemon, image_bytes, strict_json

LIMITS = {
    "EDGE_AGENT_LIMITS__BODY_TIMEOUT_S": "1",
    "EDGE_AGENT_LIMITS__IDLE_TIMEOUT_S": "1.5",
    "EDGE_AGENT_LIMITS__MAX_BODY_BYTES": str(1024 * 1024),
    "EDGE_AGENT_LIMITS__REFUSAL_DRAIN_BYTES": str(600 * 1024),
}
DETECT = "/v1/models/tiny/detect"


@pytest.fixture
async def daemon(tmp_path):
    args = ["--state-dir", str(tmp_path / "state"), "--model", f"tiny={TINY_MODEL}"]
    d = Daemon(args, env=LIMITS)
    try:
        await d.wait_ready()
        yield d
    finally:
        d.stop()


async def still_serves(d: Daemon) -> None:
    async with aiohttp.ClientSession() as http, http.post(
        d.url + DETECT, data=image_bytes("coffee-600x400.jpg"),
        headers={"Content-Type": "image/jpeg"},
    ) as resp:
        assert resp.status == 200, await resp.text()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 10)
    return status, headers, body


async def closed_by_peer(reader: asyncio.StreamReader, within_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(65536), within_s) == b""
    except ConnectionResetError:
        return True
    except asyncio.TimeoutError:
        return False


async def test_a_slow_body_gets_408_within_the_body_timeout_and_the_connection_closes(daemon):
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(
        f"POST {DETECT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        "Content-Length: 100000\r\n\r\n".encode()
    )
    started = time.monotonic()
    dribble = asyncio.create_task(_dribble(writer, b"\xff", every_s=0.2))
    try:
        status, headers, body = await read_response(reader)
        took = time.monotonic() - started
    finally:
        dribble.cancel()
    assert status == 408
    assert json.loads(body)["detail"] == {"body_timeout_s": 1.0}
    assert headers.get("connection", "").lower() == "close"
    assert took < 5, took
    assert await closed_by_peer(reader, 3)
    writer.close()
    await still_serves(daemon)


async def _dribble(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    try:
        while True:
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(every_s)
    except (ConnectionError, OSError):
        pass  # the server hung up: the point


async def test_dribbled_headers_and_idle_connections_are_closed_and_others_still_served(daemon):
    conns = [await asyncio.open_connection("127.0.0.1", daemon.port) for _ in range(40)]
    dribblers = []
    for i, (_, writer) in enumerate(conns[:30]):
        writer.write(f"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ".encode())
        dribblers.append(asyncio.create_task(_dribble(writer, b"a", every_s=0.2)))
    # conns[30:] open and send nothing at all.
    try:
        await still_serves(daemon)  # while 40 connections are held open
        closed = await asyncio.gather(*(closed_by_peer(r, 6) for r, _ in conns))
    finally:
        for task in dribblers:
            task.cancel()
        for _, writer in conns:
            writer.close()
    assert all(closed), f"{closed.count(False)} of {len(conns)} connections still open"
    await still_serves(daemon)


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ("X-Big: " + "a" * 20_000 + "\r\n", "one header line of 20 KB"),
        ("".join(f"X-H{i}: v\r\n" for i in range(200)), "200 header lines"),
    ],
)
async def test_oversized_headers_are_refused_without_harm(daemon, headers, why):
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(f"GET /health HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    await writer.drain()
    status, headers, body = await read_response(reader)
    assert status in (400, 431), why
    assert headers["content-type"].startswith("application/json"), why
    assert strict_json(body)["error"], why
    assert await closed_by_peer(reader, 3), why
    writer.close()
    await still_serves(daemon)


async def test_an_endless_chunked_body_stops_being_read_at_the_limit(daemon):
    limit = int(LIMITS["EDGE_AGENT_LIMITS__MAX_BODY_BYTES"])
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(
        f"POST {DETECT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"10000\r\n" + b"\xff" * 0x10000 + b"\r\n"
    sent = 0
    answer: list[int] = []

    async def listen() -> None:
        try:
            status, _, _ = await read_response(reader)
            answer.append(status)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # reset before the answer could be read: a refusal too

    listener = asyncio.create_task(listen())
    started = time.monotonic()
    try:
        while time.monotonic() - started < 20:  # 20 s at loopback speed: gigabytes if read on
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 5)
            sent += len(chunk)
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass
    await asyncio.wait_for(listener, 10)
    writer.close()
    # What the kernel's socket buffers hold on both sides comes on top of the limit.
    print(f"sent {sent / 1e6:.1f} MB before the server stopped reading (limit {limit / 1e6} MB)")
    assert sent < limit + 32 * 1024 * 1024
    assert answer in ([413], [])
    await still_serves(daemon)


async def test_expect_100_continue_over_the_limit_is_413_at_once_without_inviting_the_body(daemon):
    limit = int(LIMITS["EDGE_AGENT_LIMITS__MAX_BODY_BYTES"])
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(
        f"POST {DETECT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Expect: 100-continue\r\nContent-Length: {limit * 50}\r\n\r\n".encode()
    )
    await writer.drain()
    # The very first bytes back are the final answer: no "HTTP/1.1 100 Continue" before it.
    status, headers, body = await read_response(reader)
    assert status == 413
    assert strict_json(body)["detail"] == {"max_bytes": limit}
    assert headers.get("connection", "").lower() == "close"
    assert await closed_by_peer(reader, 3)
    writer.close()
    await still_serves(daemon)


async def test_expect_100_continue_within_the_limit_is_invited_and_answered(daemon):
    frame = image_bytes("coffee-600x400.jpg")
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(
        f"POST {DETECT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Expect: 100-continue\r\nContent-Length: {len(frame)}\r\n\r\n".encode()
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(frame)
    status, _, body = await read_response(reader)
    assert status == 200, body
    assert strict_json(body)["image"] == {"width": 600, "height": 400}
    writer.close()


@pytest.mark.parametrize(
    ("head", "why"),
    [
        ("POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n", "bad Content-Length"),
        ("POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
         "huge Content-Length"),
        ("POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
         "duplicate Content-Length"),
        ("POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n"
         "\r\nabcd", "Transfer-Encoding with Content-Length"),
        ("POST {p} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
         "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n", "bad chunk size"),
        ("GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n", "bad method"),
        ("GET /health HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", "space in a header name"),
        ("GET /health HTTP/9.9\r\nHost: x\r\n\r\n", "bad version"),
    ],
)
async def test_requests_the_http_parser_refuses_get_the_json_error_shape(daemon, head, why):
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(head.format(p=DETECT).encode())
    await writer.drain()
    status, headers, body = await read_response(reader)
    assert 400 <= status < 500, (why, status, body)
    assert headers["content-type"].startswith("application/json"), (why, headers)
    answer = strict_json(body)
    assert isinstance(answer, dict), why
    assert answer["error"], (why, answer)
    assert set(answer) == {"error", "detail"}, (why, answer)
    writer.close()
    await still_serves(daemon)


async def test_a_non_ascii_bearer_token_is_401_not_500(tmp_path):
    token = tmp_path / "token"
    token.write_text("the-admin-token\n")
    d = Daemon(["--state-dir", str(tmp_path / "state"), "--model", f"tiny={TINY_MODEL}"],
               env={"EDGE_AGENT_ADMIN__TOKEN_FILE": str(token)})
    try:
        await d.wait_ready()
        for credential in (b"Bearer \xc3\xa9t\xc3\xa9", b"Bearer \xff\xfe",
                           b"Bearer " + b"\xe2\x82\xac" * 50, b"\xff"):
            reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
            writer.write(b"POST /v1/admin/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                         b"Authorization: " + credential + b"\r\n\r\n")
            await writer.drain()
            status, _, body = await read_response(reader)
            writer.close()
            assert status == 401, (credential, body)
            assert strict_json(body)["error"] == "a valid bearer token is required"
    finally:
        d.stop()


async def test_a_refused_frame_is_read_and_discarded_so_the_client_reads_its_answer(daemon):
    """Refused before its body was read (an unknown model: 404; a full queue's 503 alike): a
    frame-sized body is read and thrown away, the client (which sends the whole body before
    it reads) gets its answer, and the connection serves the next request. A body over
    limits.refusal_drain_bytes gets its answer with the connection closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    frame = image_bytes("coffee-600x400.jpg")
    body = frame + b"\0" * (500 * 1024 - len(frame))  # 500 KB: more than socket buffers hold
    writer.write(f"POST /v1/models/nope/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg"
                 f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    status, headers, answer = await read_response(reader)
    assert status == 404, answer
    assert headers.get("connection", "").lower() != "close"
    writer.write(f"POST {DETECT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 f"Content-Length: {len(frame)}\r\n\r\n".encode() + frame)
    await writer.drain()
    status, _, answer = await read_response(reader)
    assert status == 200, answer  # the same connection, after the refusal
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    big = b"\xff" * (900 * 1024)
    writer.write(f"POST /v1/models/nope/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg"
                 f"\r\nContent-Length: {len(big)}\r\n\r\n".encode())
    await writer.drain()
    status, headers, answer = await read_response(reader)
    assert status == 404, answer
    assert headers.get("connection", "").lower() == "close"
    writer.close()
    await still_serves(daemon)
