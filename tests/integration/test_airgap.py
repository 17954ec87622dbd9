"""k3s/airgap as an operator uses it, against real components.

- ``save-images.sh IMAGE`` (README's command) saves the image under the DaemonSet's name (the CPU
  overlay's ``images:``). A containerd of its own imports the tarball as K3s does at start and
  lists it under that name; a clean Docker engine (a dockerd with a fresh data root, exec root
  and socket) loads it and runs it as the DaemonSet does (read-only root, uid 10001, no
  capabilities, the overlay's settings, ``--pull never``): ``/health`` 200 and a real detection.
- ``registries.yaml`` parses and uses only the keys K3s documents. Templated to a real registry
  (Debian's docker-registry over TLS, from a CA of the test's own) and filled by
  ``PUSH=... save-images.sh``, every mirror endpoint answers over TLS verified with its
  ``ca_file``; turned into containerd's hosts.toml as K3s does, a clean containerd pulls the
  overlay's image by its own name through the mirror (and cannot without the CA), and gets the
  very image that was built.

What cannot run here is K3s itself: its containerd is stood in for by Debian's containerd, the
registries.yaml -> hosts.toml step by ``hosts_toml`` below.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from support import docker_engine, free_port, require, stop_process, unmount_and_remove

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
AIRGAP = ROOT / "k3s" / "airgap"
SAVE_IMAGES = AIRGAP / "save-images.sh"
REGISTRIES = AIRGAP / "registries.yaml"
OVERLAY = ROOT / "k3s" / "overlays" / "cpu" / "kustomization.yaml"
K3S_IMAGES = Path("/var/lib/rancher/k3s/agent/images")
FRAME = ROOT / "inference" / "bundled" / "defects" / "golden" / "000.jpg"

# The template's site values (registries.yaml's header): where the registry answers, its CA.
TEMPLATE_HOST = "registry.internal:5000"
TEMPLATE_CA = "/etc/rancher/k3s/registry-ca.crt"

# K3s' documented registries.yaml keys (docs.k3s.io, "Private Registry Configuration").
K3S_MIRROR_KEYS = {"endpoint", "rewrite"}
K3S_CONFIG_KEYS = {"auth", "tls"}
K3S_AUTH_KEYS = {"username", "password", "auth", "token"}
K3S_TLS_KEYS = {"ca_file", "cert_file", "key_file", "insecure_skip_verify"}

MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
        **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def image_id(env: dict[str, str], ref: str) -> str:
    return run("docker", "image", "inspect", "--format", "{{.Id}}", ref, env=env).stdout.strip()


def overlay_cpu() -> tuple[str, dict[str, str]]:
    """The CPU overlay's image reference and the settings its ConfigMap adds."""
    kustomization = yaml.safe_load(OVERLAY.read_text())
    (image,) = [i for i in kustomization["images"] if i["name"] == "edge-agent"]
    (generator,) = kustomization["configMapGenerator"]
    settings = dict(literal.split("=", 1) for literal in generator["literals"])
    return f"{image['newName']}:{image['newTag']}", settings


def split_reference(ref: str) -> tuple[str, str, str]:
    """``registry/repository:tag`` as containerd reads it: no registry part means docker.io."""
    first, _, rest = ref.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        first, rest = "docker.io", ref if "/" in ref else f"library/{ref}"
    repository, _, tag = rest.rpartition(":")
    return first, repository, tag


@pytest.fixture
def clean_engine() -> Iterator[dict[str, str]]:
    """A second dockerd that has never seen the image: nothing in it to begin with."""
    with docker_engine() as env:
        assert run("docker", "images", "-q", env=env).stdout.strip() == ""
        yield env


@contextlib.contextmanager
def containerd_of_its_own() -> Iterator[list[str]]:
    """A containerd with its own root, state and socket (K3s embeds containerd: its image
    import and its registry mirrors are containerd's). Yields ``ctr`` for K3s' namespace."""
    for tool in ("containerd", "ctr"):
        require(shutil.which(tool) is not None, f"{tool} (apt-get install docker.io brings it)")
    base = Path(tempfile.mkdtemp(prefix="ectd"))  # short: the socket path has a length limit
    sock = base / "containerd.sock"
    config = base / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
    )
    log = (base / "containerd.log").open("wb")
    proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    ctr = ["ctr", "--address", str(sock), "--namespace", "k8s.io"]
    try:
        end = time.monotonic() + 30
        while subprocess.run([*ctr, "version"], capture_output=True, timeout=30).returncode:
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError("containerd did not start:\n"
                                     + (base / "containerd.log").read_text()[-3000:])
            time.sleep(0.2)
        yield ctr
    finally:
        stop_process(proc, 30)
        log.close()
        unmount_and_remove(base)


@pytest.fixture
def clean_containerd() -> Iterator[list[str]]:
    with containerd_of_its_own() as ctr:
        assert run(*ctr, "images", "ls", "-q").stdout.strip() == ""
        yield ctr


def save_images(cwd: Path, *images: str, env: dict[str, str], node_images: Path | None = None,
                extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """README's `k3s/airgap/save-images.sh IMAGE...`, as root, in a mount namespace of its own
    where /var/lib is empty (whatever this machine is, the script writes nowhere outside the
    test) or, with ``node_images``, holds a K3s node's images directory: that folder."""
    require(shutil.which("unshare") is not None, "unshare (util-linux)")
    node = (f'mkdir -p {K3S_IMAGES} && mount --bind "$NODE_IMAGES" {K3S_IMAGES} && '
            if node_images else "")
    return run("unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs none /var/lib && {node}exec "$0" "$@"',
               str(SAVE_IMAGES), *images, cwd=cwd,
               env={**env, **(extra or {}), "NODE_IMAGES": str(node_images or "")})


def wait_healthy(url: str, name: str, env: dict[str, str], timeout: float = 180) -> None:
    status: object = None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = run("docker", "inspect", "--format", "{{.State.Status}}", name, env=env)
        if state.stdout.strip() != "running":
            break
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                status = resp.status
                if status == 200:
                    return
        except urllib.error.HTTPError as e:
            status = e.code  # 503 while models load
        except OSError as e:
            status = e
        time.sleep(0.5)
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True,
                          env={**os.environ, **env})
    raise AssertionError(f"/health never 200 (last: {status})\n{logs.stdout[-3000:]}"
                         f"{logs.stderr[-3000:]}")


@pytest.mark.timeout(900)  # the first test to ask for the session's image pays for its build
def test_save_images_output_loads_into_a_clean_engine_and_runs_as_the_daemonset_does(
    docker: dict[str, str], edge_agent_image: str, clean_engine: dict[str, str],
    clean_containerd: list[str], tmp_path: Path
):
    image, settings = overlay_cpu()
    run("docker", "tag", edge_agent_image, image, env=docker)
    built = image_id(docker, image)
    # An operator on a K3s node, as root: the tarball here to carry to the other nodes, and
    # one in this node's images directory.
    operator, node_images = tmp_path / "operator", tmp_path / "node-images"
    operator.mkdir()
    node_images.mkdir()
    out = save_images(operator, image, env=docker, node_images=node_images)
    tarball = operator / "edge-agent-images.tar"
    assert [p.name for p in operator.iterdir()] == [tarball.name], out.stdout  # no temporary
    assert [p.name for p in node_images.iterdir()] == [tarball.name], out.stdout
    assert filecmp.cmp(tarball, node_images / tarball.name, shallow=False)
    assert "/var/lib/rancher/k3s/agent/images/" in out.stdout
    # Docker's archive format (containerd reads the same); the image under the DaemonSet's name.
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)
    assert [m["RepoTags"] for m in manifest] == [[image]]

    # What K3s does with its images directory at start: containerd imports each tarball into
    # the k8s.io namespace (not unpacked here: the clean Docker engine below unpacks and runs
    # the same layers).
    run(*clean_containerd, "images", "import", "--no-unpack", str(node_images / tarball.name))
    assert run(*clean_containerd, "images", "ls", "-q").stdout.split() == [image]

    engine = clean_engine
    missing = subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                             env={**os.environ, **engine})
    assert missing.returncode != 0
    run("docker", "load", "-i", str(tarball), env=engine)
    assert image_id(engine, image) == built

    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 10001, 10001)  # what the DaemonSet's init container does to its hostPath
    port = free_port()
    name = f"edge-agent-airgap-{port}"
    env_args = [arg for key, value in {
        **settings,
        "NODE_NAME": "airgap-test-node",
        "EDGE_AGENT_STATE_DIR": "/var/lib/edge-agent",
        "HOME": "/var/lib/edge-agent",
        "EDGE_AGENT_PORT": str(port),
    }.items() for arg in ("-e", f"{key}={value}")]
    try:
        # As the DaemonSet runs it, from the loaded image only (--pull never: no registry).
        run("docker", "run", "-d", "--name", name, "--pull", "never", "--network", "host",
            "--read-only", "--tmpfs", "/tmp", "-v", f"{state}:/var/lib/edge-agent",
            "--user", "10001:10001", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", *env_args, image, env=engine)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, name, engine)
        request = urllib.request.Request(f"{url}/v1/models/defects/detect",
                                         data=FRAME.read_bytes(),
                                         headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            assert resp.status == 200
            body = json.loads(resp.read())
        assert body["model"] == "defects"
        assert body["detections"], body
        assert run("docker", "exec", name, "id", "-u", env=engine).stdout.strip() == "10001"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120,
                       env={**os.environ, **engine})


def check_k3s_keys(config: dict) -> None:
    """Only what K3s documents: mirrors.<registry>.endpoint (+ rewrite), configs.<host>.tls /
    .auth; every endpoint a URL with a scheme and a host, every configs key one of those hosts."""
    assert set(config) <= {"mirrors", "configs"}, set(config)
    assert config["mirrors"], "no mirrors"
    for registry, mirror in config["mirrors"].items():
        assert set(mirror) <= K3S_MIRROR_KEYS, (registry, set(mirror))
        assert isinstance(mirror["endpoint"], list), registry
        assert mirror["endpoint"], registry
        for endpoint in mirror["endpoint"]:
            url = urlsplit(endpoint)
            assert url.scheme in ("https", "http"), endpoint
            assert url.netloc, endpoint
    endpoint_hosts = {urlsplit(e).netloc for m in config["mirrors"].values() for e in m["endpoint"]}
    for host, cfg in (config.get("configs") or {}).items():
        # K3s applies configs.<host> to the endpoints (or registry) of that host:port.
        assert host in endpoint_hosts | set(config["mirrors"]), f"configs.{host} matches nothing"
        assert set(cfg) <= K3S_CONFIG_KEYS, (host, set(cfg))
        assert set(cfg.get("auth") or {}) <= K3S_AUTH_KEYS, (host, cfg["auth"])
        assert set(cfg.get("tls") or {}) <= K3S_TLS_KEYS, (host, cfg["tls"])


def render(config: dict, host: str, ca_file: Path) -> dict:
    """The template with this site's values, as its header says: the registry's address in the
    endpoint URLs and the ``configs`` key, and the CA's path. Mirror keys stay: they are the
    registry names the images carry."""
    assert TEMPLATE_HOST in REGISTRIES.read_text()

    def endpoint(url: str) -> str:
        parts = urlsplit(url)
        return parts._replace(netloc=host).geturl() if parts.netloc == TEMPLATE_HOST else url

    mirrors = {name: {**m, "endpoint": [endpoint(e) for e in m["endpoint"]]}
               for name, m in config["mirrors"].items()}
    configs = {}
    for key, cfg in config["configs"].items():
        tls = dict(cfg.get("tls") or {})
        if tls.get("ca_file") == TEMPLATE_CA:
            tls["ca_file"] = str(ca_file)
        configs[host if key == TEMPLATE_HOST else key] = {**cfg, "tls": tls}
    return {"mirrors": mirrors, "configs": configs}


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A CA of the test's own, and a server certificate it signs for IP 127.0.0.1."""
    openssl = shutil.which("openssl")
    require(openssl is not None, "openssl")
    assert openssl is not None
    folder.mkdir()
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr = folder / "registry.crt", folder / "registry.key", folder / "registry.csr"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run(openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=edge-agent airgap test CA",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run(openssl, "req", "-new", *ec, "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    run(openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return ca, cert, key


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, over TLS: (host:port, CA)."""
    binary = shutil.which("docker-registry")
    require(binary is not None, "docker-registry (apt-get install docker-registry)")
    assert binary is not None
    ca, cert, key = make_tls(tmp_path / "tls")
    host = f"127.0.0.1:{free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "registry")}},
        "http": {"addr": host, "tls": {"certificate": str(cert), "key": str(key)}},
    }))
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        context = ssl.create_default_context(cafile=str(ca))
        end = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"https://{host}/v2/", timeout=2, context=context):
                    break
            except OSError:
                assert proc.poll() is None, "registry exited"
                assert time.monotonic() < end, "registry did not start"
                time.sleep(0.1)
        yield host, ca
    finally:
        proc.kill()
        proc.wait()


def hosts_toml(config: dict, registry: str, tls: bool = True) -> str:
    """containerd's hosts.toml for ``registry`` as K3s writes it from registries.yaml (under
    agent/etc/containerd/certs.d/<registry>/): each mirror endpoint a host with /v2 and
    override_path, with the TLS that ``configs`` gives the endpoint's host:port. ``server`` is
    the first endpoint: no fallback to the registry's own name, as on a node started with
    --disable-default-registry-endpoint (and no name lookup leaves this machine)."""
    hosts = []
    for endpoint in config["mirrors"][registry]["endpoint"]:
        url = urlsplit(endpoint)
        assert url.netloc != registry, "an endpoint equal to the default one is not a mirror"
        path = url.path.rstrip("/")
        lines = [f'[host."{url.scheme}://{url.netloc}{path}/v2"]',
                 '  capabilities = ["pull", "resolve"]', "  override_path = true"]
        settings = ((config.get("configs") or {}).get(url.netloc) or {}).get("tls") or {}
        if tls and "ca_file" in settings:
            lines.append(f'  ca = ["{settings["ca_file"]}"]')
        if tls and "cert_file" in settings:
            lines.append(f'  client = [["{settings["cert_file"]}", "{settings["key_file"]}"]]')
        if tls and settings.get("insecure_skip_verify"):
            lines.append("  skip_verify = true")
        hosts.append((f"{url.scheme}://{url.netloc}", "\n".join(lines)))
    return f'server = "{hosts[0][0]}"\n\n' + "\n\n".join(text for _, text in hosts) + "\n"


def registry_get(url: str, ca_file: str) -> str:
    """GET over TLS verified with ``ca_file`` only; returns the Docker-Content-Digest."""
    request = urllib.request.Request(url, headers={"Accept": MANIFEST_TYPES})
    context = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(request, timeout=30, context=context) as resp:
        assert resp.status == 200, url
        return resp.headers.get("Docker-Content-Digest", "")


@pytest.mark.timeout(900)  # the first test to ask for the session's image pays for its build
def test_registries_yaml_is_k3s_config_and_its_mirror_endpoint_serves_the_image(
    docker: dict[str, str], edge_agent_image: str, clean_containerd: list[str],
    tls_registry: tuple[str, Path], tmp_path: Path
):
    template = yaml.safe_load(REGISTRIES.read_text())
    check_k3s_keys(template)
    host, ca = tls_registry
    config = render(template, host, ca)
    check_k3s_keys(config)
    (tmp_path / "registries.yaml").write_text(yaml.safe_dump(config))  # the node's copy

    image, _ = overlay_cpu()
    run("docker", "tag", edge_agent_image, image, env=docker)
    built = image_id(docker, image)
    # Fill the mirror as an operator would: save-images.sh with PUSH= the registry's address.
    operator = tmp_path / "operator"
    operator.mkdir()
    out = save_images(operator, image, env=docker, extra={"PUSH": host})
    assert f"pushed {host}/" in out.stdout, out.stdout

    # Every endpoint of every mirror speaks the registry API over TLS verified by its configs'
    # ca_file (and an unverified certificate is refused: the CA is what makes it work).
    for mirror in config["mirrors"].values():
        for endpoint in mirror["endpoint"]:
            netloc = urlsplit(endpoint).netloc
            registry_get(f"{endpoint}/v2/", config["configs"][netloc]["tls"]["ca_file"])
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"https://{host}/v2/", timeout=10,
                               context=ssl.create_default_context()).close()
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)

    # The overlay's image, resolved as containerd does with this registries.yaml.
    registry, repository, tag = split_reference(image)
    assert registry in config["mirrors"], f"no mirror for {registry} (the overlay's image)"
    (endpoint,) = config["mirrors"][registry]["endpoint"]
    netloc = urlsplit(endpoint).netloc
    assert netloc == host
    digest = registry_get(f"{endpoint}/v2/{repository}/manifests/{tag}",
                          config["configs"][netloc]["tls"]["ca_file"])
    assert digest.startswith("sha256:"), digest

    # containerd, as K3s configures it from this file, pulls the overlay's image by its own
    # name through the mirror: with the CA of ca_file, and not without it.
    ctr = clean_containerd
    for name, with_tls in (("certs.d-without-ca", False), ("certs.d", True)):
        folder = tmp_path / name / registry
        folder.mkdir(parents=True)
        (folder / "hosts.toml").write_text(hosts_toml(config, registry, tls=with_tls))
    refused_pull = subprocess.run([*ctr, "images", "pull", "--hosts-dir",
                                   str(tmp_path / "certs.d-without-ca"), image],
                                  capture_output=True, text=True, timeout=120)
    assert refused_pull.returncode != 0
    assert "certificate" in refused_pull.stderr, refused_pull.stderr
    run(*ctr, "images", "pull", "--hosts-dir", str(tmp_path / "certs.d"), image)
    rows = [line.split() for line in run(*ctr, "images", "ls").stdout.splitlines()[1:]]
    assert [(row[0], row[2]) for row in rows] == [(image, digest)]
    # The very image that was built: its config (Docker's image ID) is the manifest's.
    pulled = json.loads(run(*ctr, "content", "get", digest).stdout)
    assert pulled["config"]["digest"] == built
