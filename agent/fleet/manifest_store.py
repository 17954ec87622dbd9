"""Where the fleet manifest lives, read and written with compare-and-swap: a write names the
version it replaces and fails (``ConflictError``) when someone else wrote in between, so two
controllers, or a controller and a person, never clobber each other.

Stores by location (``open_store``):
- a path or ``file:///path``: a file, written atomically (temp file, fsync, rename: the nodes'
  file watch sees one complete change); the version is the sha256 of its bytes, checked under
  an ``flock`` on ``<path>.lock``;
- ``http://`` / ``https://``: GET, and PUT with ``If-Match`` the ETag read (the server must
  support conditional PUT: a WebDAV share, an object store);
- ``configmap://NAMESPACE/NAME[/KEY]``: a Kubernetes ConfigMap through the API (the official
  client, extra ``fleet``; in a pod its service account, else the kubeconfig), patched with its
  ``resourceVersion`` as the precondition. KEY defaults to ``fleet.yaml``.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from inference.errors import EdgeError
from inference.files import atomic_write


class StoreError(EdgeError):
    """The manifest could not be read or written; the message names the location."""


class ConflictError(StoreError):
    """The manifest changed since it was read: read it again and decide again."""


@dataclass(frozen=True)
class Read:
    text: str
    version: str  # opaque: what ``write`` checks


class ManifestStore(Protocol):
    location: str

    def read(self) -> Read: ...

    def write(self, text: str, expected: str) -> None: ...

    def preview(self, text: str, current: Read) -> str:
        """What ``write`` would send (``--dry-run``)."""
        ...


def _diff(location: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                        new.splitlines(keepends=True), location, location))


class FileStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)

    def read(self) -> Read:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read the fleet manifest {self.path}: {exc}") from exc
        return Read(data.decode(), hashlib.sha256(data).hexdigest())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        with lock.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def write(self, text: str, expected: str) -> None:
        try:
            with self._locked():
                if self.read().version != expected:
                    raise ConflictError(f"{self.path} changed since it was read")
                atomic_write(self.path, text.encode())
        except OSError as exc:
            raise StoreError(f"cannot write the fleet manifest {self.path}: {exc}") from exc

    def preview(self, text: str, current: Read) -> str:
        return _diff(self.location, current.text, text)


class UrlStore:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.location = url
        self._timeout = timeout_s

    def read(self) -> Read:
        try:
            with urllib.request.urlopen(self.location, timeout=self._timeout) as resp:
                data = resp.read()
                etag = resp.headers.get("ETag")
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the fleet manifest {self.location}: {exc}") from exc
        if not etag:
            raise StoreError(f"{self.location} sent no ETag: it cannot be written safely")
        return Read(data.decode(), etag)

    def write(self, text: str, expected: str) -> None:
        request = urllib.request.Request(
            self.location, data=text.encode(), method="PUT",
            headers={"If-Match": expected, "Content-Type": "application/yaml"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code == 412:
                raise ConflictError(f"{self.location} changed since it was read") from exc
            raise StoreError(f"{self.location} refused the write: {exc.code} {exc.reason}") \
                from exc
        except OSError as exc:
            raise StoreError(f"cannot write the fleet manifest {self.location}: {exc}") from exc

    def preview(self, text: str, current: Read) -> str:
        return f"PUT {self.location} (If-Match: {current.version})\n" + _diff(
            self.location, current.text, text)


class ConfigMapStore:
    def __init__(self, namespace: str, name: str, key: str, api: Any = None) -> None:
        self.location = f"configmap://{namespace}/{name}/{key}"
        self.namespace, self.name, self.key = namespace, name, key
        self._api = api

    def _core(self) -> Any:
        if self._api is None:
            self._api = kubernetes_api()
        return self._api

    def read(self) -> Read:
        from kubernetes.client.exceptions import ApiException

        try:
            cm = self._core().read_namespaced_config_map(self.name, self.namespace)
        except ApiException as exc:
            raise StoreError(f"cannot read {self.location}: {exc.status} {exc.reason}") from exc
        except OSError as exc:
            raise StoreError(f"cannot reach the Kubernetes API for {self.location}: {exc}") \
                from exc
        data = cm.data or {}
        if self.key not in data:
            raise StoreError(f"{self.location}: the ConfigMap has no key {self.key!r}")
        return Read(data[self.key], cm.metadata.resource_version)

    def patch(self, text: str, expected: str) -> dict[str, Any]:
        # resourceVersion in a patch is a precondition: the API server answers 409 Conflict
        # when the ConfigMap changed since it was read.
        return {"metadata": {"resourceVersion": expected}, "data": {self.key: text}}

    def write(self, text: str, expected: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._core().patch_namespaced_config_map(self.name, self.namespace,
                                                     self.patch(text, expected))
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"{self.location} changed since it was read") from exc
            raise StoreError(f"cannot write {self.location}: {exc.status} {exc.reason}") \
                from exc
        except OSError as exc:
            raise StoreError(f"cannot reach the Kubernetes API for {self.location}: {exc}") \
                from exc

    def preview(self, text: str, current: Read) -> str:
        return (f"PATCH configmaps/{self.name} in namespace {self.namespace}:\n"
                + json.dumps(self.patch(text, current.version), indent=2) + "\n"
                + _diff(self.location, current.text, text))


def kubernetes_api() -> Any:
    """CoreV1Api: in a pod its service account, elsewhere the kubeconfig ($KUBECONFIG)."""
    try:
        from kubernetes import client, config
    except ImportError as exc:
        raise StoreError("a configmap:// manifest needs the Kubernetes client: "
                         "pip install 'edge-agent[fleet]'") from exc
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            # $KUBECONFIG read now (the client reads it once, when it is imported)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        except (config.ConfigException, OSError) as exc:
            raise StoreError(f"no Kubernetes credentials (in-cluster or kubeconfig): {exc}") \
                from exc
    return client.CoreV1Api()


def _file(location: str) -> ManifestStore:
    return FileStore(Path(unquote(urlparse(location).path)))


def _configmap(location: str) -> ManifestStore:
    parts = location.removeprefix("configmap://").strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise StoreError(f"{location}: expected configmap://NAMESPACE/NAME[/KEY]")
    return ConfigMapStore(parts[0], parts[1], parts[2] if len(parts) == 3 else "fleet.yaml")


def manifest_stores() -> dict[str, Callable[[str], ManifestStore]]:
    """Location scheme -> the store that reads and writes the manifest there."""
    return {
        "file": _file,
        "http": UrlStore,
        "https": UrlStore,
        "configmap": _configmap,
    }


def open_store(location: str) -> ManifestStore:
    scheme = location.split("://", 1)[0] if "://" in location else ""
    if not scheme:
        return FileStore(Path(location))
    stores = manifest_stores()
    if scheme not in stores:
        raise StoreError(f"{location}: the manifest location must be a path or start with "
                         f"{', '.join(s + '://' for s in stores)}")
    return stores[scheme](location)
