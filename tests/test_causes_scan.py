"""`scan` groups symptoms under their root cause: the table prints each root with its symptoms indented under
it (not again on their own), the JSON carries caused_by, affected and the symptom ids."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

T0 = 1_700_000_000.0
REFUSED = (
    "k8s.io/client-go@v0.21.2/tools/cache/reflector.go:167: Failed to watch *v1.ConfigMap: failed to list "
    '*v1.ConfigMap: Get "https://10.96.0.1:443/api/v1/configmaps?limit=500": dial tcp 10.96.0.1:443: '
    "connect: connection refused"
)
NOT_READY = (
    "Envoy proxy is NOT ready: config not received from Pilot (is Pilot running?): cds updates: 1 successful, "
    "0 rejected; lds updates: 0 successful, 0 rejected"
)
PODS = ("cart-7d9f8b6c5d-x2x4q", "cart-7d9f8b6c5d-k8z9w", "ledger-6c8d7f9b5-p7r2t")


def stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_log(path: Path, *, istiod_down: bool) -> Path:
    lines: list[tuple[float, str]] = []
    if istiod_down:  # four minutes of refused connections: on its own, a transient inside istiod's 5m window
        for k in range(0, 241, 10):
            line = f"[pod/istiod-5d9c7b7d8-w2x4z/discovery] {stamp(T0 + k)}\terror\tklog\t{REFUSED}"
            lines.append((T0 + k, line))
    for pod in PODS:
        for k in range(20, 301, 10):
            lines.append((T0 + k, f"[pod/{pod}/istio-proxy] {stamp(T0 + k)}\tinfo\t{NOT_READY}"))
    lines.sort()
    path.write_text("".join(f"{line}\n" for _, line in lines))
    return path


def scan(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "analyzer", "scan", "--namespace", "shop", *args],
        capture_output=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_the_table_prints_symptoms_under_their_root(tmp_path: Path) -> None:
    out = scan(str(write_log(tmp_path / "a.log", istiod_down=True)))
    blocks = [b for b in out.split("\n\n") if b.strip()]
    heads = [b.splitlines()[0] for b in blocks[1:]]
    assert blocks[0].startswith("3 incidents in ") and "(2 symptoms shown under 1 root cause)" in blocks[0]
    assert len(heads) == 1 and heads[0].startswith("OPEN") and "istiod-apiserver-unreachable" in heads[0]
    root = blocks[1]
    assert "symptoms: 2 incident(s) caused by this, 2 workload(s), 3 pod(s) affected" in root
    indented = [line for line in root.splitlines() if line.startswith("    ↳ ")]
    assert len(indented) == 2 and all("proxy-not-ready  [proxy-readiness]" in line for line in indented)
    assert {line.split()[-3] for line in indented} == {"shop/cart", "shop/ledger"}


def test_the_json_carries_the_grouping(tmp_path: Path) -> None:
    found: list[dict[str, Any]] = json.loads(
        scan("--output", "json", str(write_log(tmp_path / "a.log", istiod_down=True)))
    )
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for incident in found:
        by_rule.setdefault(incident["rule"], []).append(incident)
    (root,) = by_rule["istiod-apiserver-unreachable"]
    symptoms = by_rule["proxy-not-ready"]
    assert root["caused_by"] is None and root["status"] == "open"
    assert root["affected"] == {"incidents": 2, "workloads": 2, "pods": 3}
    assert sorted(root["symptoms"]) == sorted(s["id"] for s in symptoms)
    assert all(s["caused_by"] == root["id"] for s in symptoms)


def test_with_a_healthy_istiod_the_proxy_incidents_stand_alone(tmp_path: Path) -> None:
    out = scan(str(write_log(tmp_path / "a.log", istiod_down=False)))
    assert "symptoms:" not in out and "↳" not in out
    heads = [b.splitlines()[0] for b in out.split("\n\n")[1:] if b.strip()]
    assert len(heads) == 2 and all("proxy-not-ready" in h for h in heads)
