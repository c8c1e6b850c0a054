"""Kubernetes manifests: schema validation (kubernetes-validate), the CRDs' structure and cross-references."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_support import (
    KUBERNETES,
    PATTERNS,
    ROOT,
    assert_ok,
    find_tool,
    load_yaml,
    load_yaml_all,
    run,
)

K8S_VERSION = "1.37.0"
CRD_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def _by_kind() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in load_yaml_all(path):
            assert doc["kind"] not in docs, f"two {doc['kind']} manifests"
            docs[doc["kind"]] = doc
    return docs


@pytest.fixture(scope="module")
def objs() -> dict[str, dict[str, Any]]:
    return _by_kind()


@pytest.fixture(scope="module")
def container(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate==1.37.0 (dev extra)"
    )
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_kubernetes_schema(path: Path) -> None:
    docs = load_yaml_all(path)
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # no schema in kubernetes-validate; checked structurally below
        _validate(doc)


def test_schema_validation_rejects_an_invalid_deployment(objs: dict[str, dict[str, Any]]) -> None:
    # Control: the validator must catch a typo'd field and a wrong type in our own Deployment.
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
    broken = {**objs["Deployment"], "spec": {**objs["Deployment"]["spec"], "replicas": "one"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_all_expected_objects_exist(objs: dict[str, dict[str, Any]]) -> None:
    expected = {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    }
    assert set(objs) == expected


def test_deployment_runs_hardened(objs: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    image = container["image"]
    assert ":" in image and not image.endswith(":latest")


def test_probes_and_ports(objs: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    config = objs["ConfigMap"]["data"]
    assert config["ANALYZER_HTTP_PORT"] == str(port["containerPort"])
    (service_port,) = objs["Service"]["spec"]["ports"]
    assert service_port["name"] == "http" and service_port["port"] == 8080
    assert service_port["targetPort"] in ("http", 8080)


def test_environment_comes_from_configmap_and_secret(
    objs: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    token = env["ANALYZER_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["name"] and token["key"]
    config = objs["ConfigMap"]["data"]
    assert "ANALYZER_API_TOKEN" not in config, "the token belongs in a Secret"
    assert all(isinstance(v, str) for v in config.values()), "ConfigMap values must be strings"
    assert {"ANALYZER_KAFKA_BOOTSTRAP", "ANALYZER_KAFKA_TOPICS", "ANALYZER_STORE_URL"} <= config.keys()


def test_writable_paths_are_volumes(objs: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    # With a read-only root filesystem every path the service writes must be a mount.
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config = objs["ConfigMap"]["data"]
    env = {e["name"]: e.get("value") for e in container["env"]}

    store = config["ANALYZER_STORE_URL"]
    assert store.startswith("sqlite:////"), "SQLite needs an absolute path on the volume"
    db_dir = str(Path(store.removeprefix("sqlite:///")).parent)
    data = volumes[mounts[db_dir]["name"]]
    assert data["persistentVolumeClaim"]["claimName"] == objs["PersistentVolumeClaim"]["metadata"]["name"]
    assert not mounts[db_dir].get("readOnly", False)

    cache = env["XDG_CACHE_HOME"]
    assert cache is not None
    assert any(cache.startswith(path) and "emptyDir" in volumes[m["name"]] for path, m in mounts.items())


def test_patterns_configmap_is_mounted_where_the_service_looks(
    objs: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    patterns_dir = objs["ConfigMap"]["data"]["ANALYZER_PATTERNS_DIR"]
    assert patterns_dir == "/app/patterns-override"
    mount = {m["mountPath"]: m for m in container["volumeMounts"]}[patterns_dir]
    assert mount.get("readOnly") is True
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    generators = {g["name"] for g in load_yaml(KUBERNETES / "kustomization.yaml")["configMapGenerator"]}
    assert volume["configMap"]["name"] in generators


def test_selectors_line_up(objs: dict[str, dict[str, Any]]) -> None:
    pod_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        objs["Deployment"]["spec"]["selector"]["matchLabels"],
        objs["Service"]["spec"]["selector"],
    ):
        assert selector.items() <= pod_labels.items()
    monitor = objs["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= objs["Service"]["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == objs["Service"]["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_single_sqlite_replica_uses_recreate(objs: dict[str, dict[str, Any]]) -> None:
    spec = objs["Deployment"]["spec"]
    if objs["ConfigMap"]["data"]["ANALYZER_STORE_URL"].startswith("sqlite"):
        assert spec["replicas"] == 1, "replicas > 1 need the PostgreSQL store"
        assert spec["strategy"]["type"] == "Recreate"


def test_kustomization_lists_every_manifest_and_pattern_file(objs: dict[str, dict[str, Any]]) -> None:
    kustomization = load_yaml(KUBERNETES / "kustomization.yaml")
    assert kustomization["namespace"] == objs["Namespace"]["metadata"]["name"]
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)
    (generator,) = kustomization["configMapGenerator"]
    listed = sorted((KUBERNETES / f).resolve() for f in generator["files"])
    present = sorted(p.resolve() for p in PATTERNS.glob("*.yaml"))
    if not present:
        pytest.skip("patterns/ has no *.yaml yet")
    assert [p.name for p in listed] == [p.name for p in present], (
        "deploy/kubernetes/kustomization.yaml configMapGenerator must list exactly patterns/*.yaml"
    )


def test_kustomize_build_renders_valid_objects(tmp_path: Path) -> None:
    kubectl = find_tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found on PATH (kustomize build not checked)")
    if not list(PATTERNS.glob("*.yaml")):
        pytest.skip("patterns/ has no *.yaml yet")
    # Copy the two directories kustomize reads, so the build sees this checkout and nothing else.
    shutil.copytree(KUBERNETES, tmp_path / "deploy" / "kubernetes")
    shutil.copytree(PATTERNS, tmp_path / "patterns")
    result = run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", "deploy/kubernetes"], tmp_path)
    assert_ok(result)
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in rendered:
        assert doc["metadata"].get("namespace", "mesh-analyzer") == "mesh-analyzer"
        if doc["kind"] not in CRD_KINDS:
            _validate(doc)
    (patterns_cm,) = [d for d in rendered if d["metadata"]["name"].startswith("mesh-analyzer-patterns-")]
    assert sorted(patterns_cm["data"]) == sorted(p.name for p in (ROOT / "patterns").glob("*.yaml"))
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    names = {v.get("configMap", {}).get("name") for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert patterns_cm["metadata"]["name"] in names, "the Deployment must reference the hash-suffixed ConfigMap"
