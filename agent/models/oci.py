"""``oci://registry/repo:tag``: models as OCI artifacts (pushed with ORAS), over the OCI
distribution API — the factory's existing registry and K3s' registry mirror carry them.

The artifact's layers are the version's files, named by their ``org.opencontainers.image.title``
annotation: ``model.json`` (the sidecar), the ONNX file it names and, when it names one, its
golden set (``oras push host/repo:tag model.onnx model.json golden.tar``). Blobs are addressed by
digest, so what the registry serves is verified like any other download. Registries are reached
over HTTPS except those listed as insecure (a registry on the node's own network without TLS).
Credentials: HTTP basic, or the bearer-token dance of Docker/distribution registries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from agent.models.cache import parse_digest
from agent.models.sources import CHUNK, MAX_SIDECAR_BYTES, SourceError, check_status

MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
TITLE = "org.opencontainers.image.title"
SIDECAR_TITLE = "model.json"
_REF = re.compile(r"^oci://(?P<host>[^/]+)/(?P<repo>[a-z0-9._/-]+?)(?::(?P<tag>[\w.-]{1,128})|"
                  r"@(?P<digest>sha256:[0-9a-f]{64}))?$")
_BLOB = re.compile(
    r"^oci-blob://(?P<host>[^/]+)/(?P<repo>[a-z0-9._/-]+)@(?P<digest>sha256:[0-9a-f]{64})$"
)


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class OciRef:
    host: str
    repo: str
    reference: str  # a tag or a digest

    @classmethod
    def parse(cls, ref: str) -> OciRef:
        m = _REF.match(ref)
        if m is None:
            raise SourceError(f"not an OCI reference (oci://host/repo:tag): {ref!r}")
        return cls(m["host"], m["repo"], m["tag"] or m["digest"] or "latest")


class OciSource:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        insecure: frozenset[str] = frozenset(),
        credentials: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self._session = session
        self._insecure = insecure
        self._credentials = credentials or {}
        self._tokens: dict[str, str] = {}
        self._layers: dict[str, dict[str, str]] = {}  # ref -> title -> digest

    def _base(self, host: str) -> str:
        return f"{'http' if host in self._insecure else 'https'}://{host}/v2"

    async def sidecar(self, ref: str) -> bytes:
        parsed = OciRef.parse(ref)
        base = f"{self._base(parsed.host)}/{parsed.repo}"
        async with self._get(parsed.host, parsed.repo, f"{base}/manifests/{parsed.reference}",
                             {"Accept": MANIFEST_TYPES}) as resp:
            check_status(resp, ref)
            manifest = json.loads(await resp.content.read(MAX_SIDECAR_BYTES))
        layers = {
            str((layer.get("annotations") or {}).get(TITLE, "")): str(layer["digest"])
            for layer in manifest.get("layers", [])
        }
        self._layers[ref] = layers
        if SIDECAR_TITLE not in layers:
            raise SourceError(f"{ref}: the artifact has no {SIDECAR_TITLE} layer",
                              {"layers": sorted(layers)})
        digest = layers[SIDECAR_TITLE]
        async with self._get(parsed.host, parsed.repo, f"{base}/blobs/{digest}", {}) as resp:
            check_status(resp, ref)
            data = await resp.content.read(MAX_SIDECAR_BYTES)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise SourceError(f"{ref}: the sidecar blob does not match its digest")
        return data

    def file_url(self, ref: str, file: str, sha256: str) -> str:
        parsed = OciRef.parse(ref)
        layers = self._layers.get(ref, {})
        digest = "sha256:" + parse_digest(sha256)
        if layers.get(file) != digest:
            raise SourceError(
                f"{ref}: the artifact's {file!r} layer is not the sidecar's sha256"
                if file in layers else f"{ref}: the artifact has no {file!r} layer",
                {"layer": layers.get(file), "sidecar": digest, "layers": sorted(layers)},
            )
        return f"oci-blob://{parsed.host}/{parsed.repo}@{digest}"

    async def stream(self, url: str) -> AsyncIterator[bytes]:
        m = _BLOB.match(url)
        if m is None:
            raise SourceError(f"not an OCI blob: {url!r}")
        blob = f"{self._base(m['host'])}/{m['repo']}/blobs/{m['digest']}"
        async with self._get(m["host"], m["repo"], blob, {}) as resp:
            check_status(resp, url)
            async for chunk in resp.content.iter_chunked(CHUNK):
                yield chunk

    def _get(self, host: str, repo: str, url: str, headers: dict[str, str]) -> _Request:
        return _Request(self, host, repo, url, headers)

    def _auth(self, host: str) -> dict[str, str]:
        if host in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[host]}"}
        if host in self._credentials:
            user, password = self._credentials[host]
            return {"Authorization": basic_auth(user, password)}
        return {}

    async def _token(self, host: str, repo: str, challenge: str) -> bool:
        """The registry's ``WWW-Authenticate: Bearer realm=...`` dance; True when it worked."""
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        if not challenge.lower().startswith("bearer") or not realm:
            return False
        params.setdefault("scope", f"repository:{repo}:pull")
        headers = {}
        if host in self._credentials:
            headers["Authorization"] = basic_auth(*self._credentials[host])
        async with self._session.get(realm, params=params, headers=headers) as resp:
            if resp.status != 200:
                return False
            body = await resp.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            return False
        self._tokens[host] = str(token)
        return True


class _Request:
    """GET with the host's credentials; on 401 with a bearer challenge, once more with a token."""

    def __init__(self, source: OciSource, host: str, repo: str, url: str,
                 headers: dict[str, str]) -> None:
        self._source, self._host, self._repo = source, host, repo
        self._url, self._headers = url, headers
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        session = self._source._session
        resp = await session.get(self._url, headers={**self._headers,
                                                     **self._source._auth(self._host)})
        challenge = resp.headers.get("WWW-Authenticate", "")
        if resp.status == 401 and await self._source._token(self._host, self._repo, challenge):
            resp.release()
            resp = await session.get(self._url, headers={**self._headers,
                                                         **self._source._auth(self._host)})
        self._resp = resp
        return resp

    async def __aexit__(self, *exc: object) -> None:
        if self._resp is not None:
            self._resp.release()
