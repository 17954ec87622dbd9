"""Fuzzing the detect and infer request paths of a real daemon process over HTTP.

Seeds: tests/fixtures/fuzz/{detect,infer} (made by make_corpus.py; a failure found here is added
there as a file, so it is replayed on every run). Hypothesis mutates bytes, content types, query
strings, headers and the JSON structure of inference requests. Whatever comes in: never a 5xx
(but a 504 for a deadline the request itself set), always a JSON answer, the process alive, and
its memory not growing with the number of requests."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import FIXTURES, TINY_MODEL, Daemon, strict_json

CORPUS = FIXTURES / "fuzz"
ADMIN_TOKEN = "fuzz-admin-token-7f3a"
FUZZ = settings(
    max_examples=int(os.environ.get("EDGE_FUZZ_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def corpus(kind: str) -> list[tuple[str, str, str | None, bytes]]:
    """(file name, content type, OIP header length, body) for each seed."""
    seeds = []
    for path in sorted((CORPUS / kind).iterdir()):
        parts = path.name.split(".")
        hlen = next((p[4:] for p in parts if p.startswith("hlen")), None)
        seeds.append((path.name, parts[-2].replace("_", "/", 1), hlen, path.read_bytes()))
    assert seeds, f"no seeds in {CORPUS / kind}"
    return seeds


DETECT_SEEDS = corpus("detect")
INFER_SEEDS = corpus("infer")
# Hypothesis draws seed names (short in a failure report) and looks the seed up.
DETECT = {s[0]: s for s in DETECT_SEEDS}
INFER = {s[0]: s for s in INFER_SEEDS}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fuzz")
    config = root / "config.yaml"
    token = root / "admin-token"
    token.write_text(ADMIN_TOKEN + "\n")
    config.write_text(json.dumps({
        "admin": {"token_file": str(token)},
        "models": [{"name": "tiny", "path": str(TINY_MODEL)}, {"name": "fusion",
                                                                "bundled": "fusion"}],
        "limits": {"max_body_bytes": 2 * 1024 * 1024, "max_image_pixels": 4_000_000,
                   "body_timeout_s": 2},
        "health": {"selftest_interval_s": 3600, "max_silence_s": 7200},
    }))
    d = Daemon(["--config", str(config), "--state-dir", str(root / "state")])
    try:
        asyncio.run(d.wait_ready())
        yield d
    finally:
        d.stop()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def send(d: Daemon, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_answer(d: Daemon, status: int, body: bytes, headers: dict[str, str]) -> None:
    assert d.proc.poll() is None, f"daemon died: {d.wait()}\n{d.output[-3000:]}"
    expired_ok = status == 504 and "X-Deadline-Ms" in headers
    assert status < 500 or expired_ok, (status, body[:500])
    answer = strict_json(body)
    assert isinstance(answer, dict), answer
    if status >= 400:
        assert isinstance(answer["error"], str), answer
        assert answer["error"]


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None, junk: bytes) -> bytes:
    out = bytearray(data if cut is None else data[:cut])
    for pos, value in flips:
        if out:
            out[pos % len(out)] = value
    return bytes(out) + junk


# Header values a client can really send: printable Latin-1, no CR/LF.
header_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"), max_size=40
)
mutations = st.tuples(
    st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=8),
    st.one_of(st.none(), st.integers(0, 4096)),
    st.binary(max_size=64),
)
odd_types = st.sampled_from([
    "image/jpeg", "image/png", "application/octet-stream", "multipart/form-data",
    "multipart/form-data; boundary=", "text/plain", "image/gif", "application/json", "",
    "image/jpeg; charset=utf-8", "multipart/mixed; boundary=x",
])


@FUZZ
@given(
    seed=st.sampled_from(sorted(DETECT)),
    mutation=mutations,
    ctype=st.one_of(st.none(), odd_types),
    query=st.dictionaries(st.sampled_from(["conf", "iou", "max_det", "x"]), header_text,
                          max_size=3),
    extra=st.dictionaries(st.sampled_from(["X-Deadline-Ms", "X-Camera-Id", "Accept"]),
                          header_text, max_size=2),
    model=st.sampled_from(["tiny", "tiny", "fusion", "nope", "..%2Ftiny"]),
)
def test_detect_requests(daemon, seed, mutation, ctype, query, extra, model):
    _, seed_type, _, data = DETECT[seed]
    headers = {"Content-Type": seed_type if ctype is None else ctype, **extra}
    path = f"/v1/models/{model}/detect" + (f"?{urlencode(query)}" if query else "")
    status, body = send(daemon, path, mutate(data, *mutation), headers)
    check_answer(daemon, status, body, headers)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@FUZZ
@given(
    field=st.sampled_from(["name", "datatype", "shape", "data", "parameters", "inputs", "outputs",
                           "id", None]),
    value=json_values,
)
def test_infer_json_structure(daemon, field, value):
    request = json.loads(INFER["json.application_json.json"][3])
    if field in ("inputs", "outputs", "id"):
        request[field] = value
    elif field is not None:
        request["inputs"][0][field] = value
    body = json.dumps(request, allow_nan=True).encode()
    headers = {"Content-Type": "application/json"}
    status, answer = send(daemon, "/v2/models/fusion/infer", body, headers)
    check_answer(daemon, status, answer, headers)


@FUZZ
@given(
    seed=st.sampled_from(sorted(INFER)),
    mutation=mutations,
    hlen=st.one_of(st.none(), header_text, st.integers(-5, 5000).map(str)),
    model=st.sampled_from(["fusion", "fusion", "tiny"]),
)
def test_infer_bytes(daemon, seed, mutation, hlen, model):
    _, seed_type, seed_hlen, data = INFER[seed]
    headers = {"Content-Type": seed_type}
    length = seed_hlen if hlen is None else hlen
    if length is not None:
        headers["Inference-Header-Content-Length"] = length
    status, body = send(daemon, f"/v2/models/{model}/infer", mutate(data, *mutation), headers)
    check_answer(daemon, status, body, headers)


def send_raw(d: Daemon, request: bytes) -> tuple[int, bytes]:
    """One request as raw bytes (header values no HTTP client library would send)."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), len(body))
    return status, body[:length]


@FUZZ
@given(
    scheme=st.sampled_from([b"Bearer ", b"bearer ", b"BEARER  ", b"Basic ", b"Bearer", b""]),
    credential=st.one_of(
        st.binary(max_size=64),
        st.text(max_size=32).map(lambda t: t.encode("utf-8")),
        st.text(max_size=32).map(lambda t: t.encode("utf-16")),
        st.just(ADMIN_TOKEN.encode()).flatmap(
            lambda t: st.sampled_from([t[:-1], t + b"\xff", "é".encode("latin-1") + t])),
        st.integers(1, 20_000).map(lambda n: b"A" * n),
    ),
)
def test_admin_authorization_header(daemon, scheme, credential):
    """Any bytes in the Authorization header (any encoding, NUL, 8 bit, huge): a JSON 401, or
    a JSON 400 for what HTTP itself forbids; never a 5xx, never let in."""
    credential = credential.replace(b"\r", b"").replace(b"\n", b"")
    request = (b"POST /v1/admin/sync HTTP/1.1\r\nHost: edge\r\nContent-Length: 0\r\n"
               b"Connection: close\r\nAuthorization: " + scheme + credential + b"\r\n\r\n")
    status, body = send_raw(daemon, request)
    check_answer(daemon, status, body, {})
    assert status in (400, 401), (status, body[:300])


def test_every_seed_as_is_and_memory_does_not_grow_with_requests(daemon):
    """Replays the corpus (the regressions) many times: RSS after 20 rounds is within a few
    MB of RSS after the first (allocator warm-up), so nothing is kept per request."""

    def round_trip() -> None:
        for _, ctype, _, data in DETECT_SEEDS:
            headers = {"Content-Type": ctype}
            check_answer(daemon, *send(daemon, "/v1/models/tiny/detect", data, headers), headers)
        for _, ctype, hlen, data in INFER_SEEDS:
            headers = {"Content-Type": ctype}
            if hlen is not None:
                headers["Inference-Header-Content-Length"] = hlen
            check_answer(daemon, *send(daemon, "/v2/models/fusion/infer", data, headers), headers)

    for _ in range(3):
        round_trip()
    before = rss_bytes(daemon.proc.pid)
    for _ in range(20):
        round_trip()
    after = rss_bytes(daemon.proc.pid)
    print(f"RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB over 20 corpus rounds")
    assert after - before < 16 * 2**20
