"""What the fleet reports, from Prometheus' HTTP API (``/api/v1/query``), per node and model.

Every series is keyed on the node label (``node`` by default: the scrape configs in
``k3s/prometheus`` set it to the node name, the key of the nodes' canary hash) and the cohort
on ``edge_model_canary``, the cohort each node computed itself. Sync (urllib): the controller is
a command line tool that makes a dozen queries a pass.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.fleet.policy import NodeObs
from inference.errors import EdgeError

Sample = tuple[dict[str, str], float]


class PrometheusError(EdgeError):
    """Prometheus could not be reached or refused a query; the message says which."""


def _quote(value: str) -> str:
    return json.dumps(value)  # a PromQL string literal: double quotes, backslash escapes


@dataclass(frozen=True)
class Prometheus:
    url: str
    selector: str = 'job="edge-agent"'  # the fleet's targets
    node_label: str = "node"
    timeout_s: float = 10.0

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise PrometheusError(f"Prometheus at {self.url} refused {promql!r}: "
                                  f"{exc.code} {detail}") from exc
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self.url} did not answer: {exc}") from exc
        if body.get("status") != "success" or body["data"]["resultType"] != "vector":
            raise PrometheusError(f"Prometheus at {self.url}: {promql!r}: {body}")
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def _by_node(self, promql: str, at: float | None,
                 pick: Callable[[float, float], float] = min) -> dict[str, float]:
        """One value per node (several series of one node: ``pick`` keeps one)."""
        out: dict[str, float] = {}
        for labels, value in self.query(promql, at):
            node = labels.get(self.node_label)
            if node is None or math.isnan(value):
                continue
            out[node] = pick(out[node], value) if node in out else value
        return out

    def observe(self, model: str, window_s: float, at: float | None = None) -> list[NodeObs]:
        """Every node the fleet's Prometheus knows, for ``model``, over the last ``window_s``."""
        sel = self.selector
        m = f"{sel}, model={_quote(model)}"
        w = f"[{max(int(window_s), 1)}s]"
        up = self._by_node(f"up{{{sel}}}", at, max)
        up_window = self._by_node(f"max_over_time(up{{{sel}}}{w})", at, max)
        ready = self._by_node(f"edge_ready{{{sel}}}", at)
        connected = self._by_node(f"edge_control_plane_connected{{{sel}}}", at)
        last_sync = self._by_node(
            f"edge_model_sync_last_success_timestamp_seconds{{{sel}}}", at, max)
        versions: dict[str, str] = {}
        for labels, _ in self.query(f"edge_model_info{{{m}}}", at):
            if self.node_label in labels:
                versions[labels[self.node_label]] = labels.get("version", "")
        canary: dict[str, bool] = {}
        for labels, value in self.query(f"edge_model_canary{{{m}}}", at):
            if self.node_label in labels:
                canary[labels[self.node_label]] = value == 1
                versions.setdefault(labels[self.node_label], labels.get("version", ""))
        scores: dict[str, float] = {}
        for labels, value in self.query(
                f"min_over_time(edge_model_validation_score{{{m}}}{w})", at):
            node = labels.get(self.node_label)
            # Only the version the node serves now (its earlier one was scored in the window too).
            if node is not None and labels.get("version") == versions.get(node):
                scores[node] = value
        agreement = self._by_node(f"last_over_time(edge_model_shadow_agreement{{{m}}}{w})", at)
        p99 = self._by_node(
            f'avg_over_time(edge_inference_latency_seconds{{{m}, quantile="0.99"}}{w})', at, max)
        by = f"sum by ({self.node_label})"
        requests = self._by_node(f"{by} (increase(edge_requests_total{{{m}}}{w}))", at)
        # Errors: 5xx answers (the summary counts status classes) less queue-full refusals
        # (503s shedding load: not the version's fault).
        server = self._by_node(f'{by} (increase(edge_requests_total{{{m}, code="5xx"}}{w}))', at)
        shed = self._by_node(
            f'{by} (increase(edge_requests_rejected_total{{{m}, reason="queue_full"}}{w}))', at)
        errors = {n: max(0.0, v - shed.get(n, 0.0)) for n, v in server.items()}
        nodes = sorted(set(up) | set(versions))
        return [
            NodeObs(
                node=n,
                up=up.get(n, 0.0) == 1,
                up_in_window=up_window.get(n, 0.0) == 1,
                ready=None if n not in ready else ready[n] == 1,
                connected=None if n not in connected else connected[n] == 1,
                last_sync=last_sync.get(n),
                canary=canary.get(n),
                version=versions.get(n, ""),
                score=scores.get(n),
                agreement=agreement.get(n),
                p99=p99.get(n),
                requests=requests.get(n, 0.0),
                errors=errors.get(n, 0.0),
            )
            for n in nodes
        ]


def describe(nodes: list[NodeObs]) -> dict[str, Any]:
    """Nodes per version, for ``fleet status``."""
    per_version: dict[str, list[str]] = {}
    for n in nodes:
        if n.up and n.version:
            per_version.setdefault(n.version, []).append(n.node)
    return {v: sorted(ns) for v, ns in sorted(per_version.items())}
