"""A real OCI registry for the tests (Debian's docker-registry, distribution 2.8), pushed to
with ORAS as a publisher does."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from support import free_port, require


class Registry:
    def __init__(self, root: Path, bind: str = "127.0.0.1", wrap: list[str] | None = None,
                 port: int | None = None) -> None:
        binary = shutil.which("docker-registry")
        require(binary is not None, "docker-registry (apt-get install docker-registry)")
        assert binary is not None
        self.port = port or free_port()
        self.host = f"{bind}:{self.port}"
        config = root / "registry.yml"
        config.write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
            f"http: {{addr: '{self.host}'}}\n"
        )
        self.proc = subprocess.Popen([*(wrap or []), binary, "serve", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the registry did not start")

    def push(self, folder: Path, repo_tag: str,
             files: tuple[str, ...] = ("model.onnx", "model.json")) -> str:
        import oras.client

        client = oras.client.OrasClient(hostname=self.host, insecure=True)
        # ORAS names each layer by the file's path as given: push from inside the folder.
        cwd = Path.cwd()
        try:
            os.chdir(folder)
            client.push(target=f"{self.host}/{repo_tag}", files=list(files))
        finally:
            os.chdir(cwd)
        return f"oci://{self.host}/{repo_tag}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
