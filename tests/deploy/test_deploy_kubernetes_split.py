"""deploy/kubernetes/split: ingest and API Deployments apart, over PostgreSQL (schema, build, cross-references)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_support import KUBERNETES, PATTERNS, assert_ok, find_tool, load_yaml, load_yaml_all, run

K8S_VERSION = "1.37.0"
SPLIT = KUBERNETES / "split"
OWN = sorted(p for p in SPLIT.glob("*.yaml") if p.name != "kustomization.yaml")
CRD_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """`kubectl kustomize` of the split, from a copy of the two directories it reads."""
    kubectl = find_tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found on PATH (kustomize build not checked)")
    root = tmp_path_factory.mktemp("split")
    shutil.copytree(KUBERNETES, root / "deploy" / "kubernetes")
    shutil.copytree(PATTERNS, root / "patterns")
    result = run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", "deploy/kubernetes/split"], root)
    assert_ok(result)
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert isinstance(labels, dict)
    return labels


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


@pytest.mark.parametrize("path", OWN, ids=lambda p: p.name)
def test_split_manifest_validates_against_kubernetes_schema(path: Path) -> None:
    docs = load_yaml_all(path)
    assert docs
    for doc in docs:
        _validate(doc)


def test_split_renders_valid_objects_ingest_and_api_apart(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        assert doc["metadata"].get("namespace", "mesh-analyzer") == "mesh-analyzer"
        if doc["kind"] not in CRD_KINDS:
            _validate(doc)
    kinds = sorted(d["kind"] for d in rendered)
    assert "PersistentVolumeClaim" not in kinds, "the split runs on PostgreSQL: no SQLite volume"
    deployments = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Deployment"}
    assert set(deployments) == {"mesh-analyzer-ingest", "mesh-analyzer-api"}
    ingest, api = deployments["mesh-analyzer-ingest"], deployments["mesh-analyzer-api"]
    assert _container(ingest)["args"] == ["serve", "--role", "ingest"]
    assert _container(api)["args"] == ["serve", "--role", "api"]
    assert ingest["spec"]["replicas"] > 1, "the ingest Deployment shows scaling by replicas"
    for deployment in (ingest, api):
        assert deployment["spec"]["selector"]["matchLabels"].items() <= _pod_labels(deployment).items()
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    # Neither selector takes the other's pods.
    assert not ingest["spec"]["selector"]["matchLabels"].items() <= _pod_labels(api).items()
    assert not api["spec"]["selector"]["matchLabels"].items() <= _pod_labels(ingest).items()


def test_split_services_route_api_traffic_to_api_pods_and_scrape_every_pod(rendered: list[dict[str, Any]]) -> None:
    ingest = _one(rendered, "Deployment", "mesh-analyzer-ingest")
    api = _one(rendered, "Deployment", "mesh-analyzer-api")
    api_service = _one(rendered, "Service", "mesh-analyzer")
    ingest_service = _one(rendered, "Service", "mesh-analyzer-ingest")
    assert api_service["spec"]["selector"].items() <= _pod_labels(api).items()
    assert not api_service["spec"]["selector"].items() <= _pod_labels(ingest).items(), "API traffic to ingest pods"
    assert ingest_service["spec"]["selector"].items() <= _pod_labels(ingest).items()
    assert ingest_service["spec"]["clusterIP"] == "None"
    monitor = _one(rendered, "ServiceMonitor", "mesh-analyzer")
    (endpoint,) = monitor["spec"]["endpoints"]
    for service in (api_service, ingest_service):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    for deployment in (ingest, api):
        assert {p["name"] for p in _container(deployment)["ports"]} == {"http"}


def test_split_reads_the_store_url_from_a_secret_and_shares_one_group(rendered: list[dict[str, Any]]) -> None:
    config = _one(rendered, "ConfigMap", "mesh-analyzer-config")
    assert "ANALYZER_STORE_URL" not in config["data"], "a PostgreSQL DSN carries a password: Secret, not ConfigMap"
    assert "ANALYZER_KAFKA_GROUP" in config["data"], "every ingest replica is in the ConfigMap's one group"
    (patterns,) = [d for d in rendered if d["metadata"]["name"].startswith("mesh-analyzer-patterns-")]
    for name in ("mesh-analyzer-ingest", "mesh-analyzer-api"):
        deployment = _one(rendered, "Deployment", name)
        container = _container(deployment)
        (source,) = container["envFrom"]
        assert source["configMapRef"]["name"] == config["metadata"]["name"]
        env = {e["name"]: e for e in container["env"]}
        assert env["ANALYZER_STORE_URL"]["valueFrom"]["secretKeyRef"]["key"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert volumes[mounts["/app/patterns-override"]["name"]]["configMap"]["name"] == patterns["metadata"]["name"]
        cache = env["XDG_CACHE_HOME"]["value"]
        assert any(cache.startswith(path) and "emptyDir" in volumes[m["name"]] for path, m in mounts.items())
    ingest_env = {e["name"] for e in _container(_one(rendered, "Deployment", "mesh-analyzer-ingest"))["env"]}
    assert "ANALYZER_API_TOKEN" not in ingest_env, "the ingest role serves no write endpoint"


def test_split_kustomization_lists_its_manifests_and_every_pattern_file() -> None:
    kustomization = load_yaml(SPLIT / "kustomization.yaml")
    own = {r for r in kustomization["resources"] if not r.startswith("../")}
    assert own == {p.name for p in OWN}
    for shared in (r for r in kustomization["resources"] if r.startswith("../")):
        assert (SPLIT / shared).is_file(), shared
    (generator,) = kustomization["configMapGenerator"]
    listed = sorted((SPLIT / f).resolve().name for f in generator["files"])
    assert listed == sorted(p.name for p in PATTERNS.glob("*.yaml")), (
        "deploy/kubernetes/split/kustomization.yaml configMapGenerator must list exactly patterns/*.yaml"
    )
