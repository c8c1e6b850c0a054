"""Write deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/alerts.yaml (same groups, same rules).

Run after editing alerts.yaml: `python deploy/prometheus/render_prometheusrule.py`. tests/deploy checks that the
two files carry identical groups.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "alerts.yaml"
TARGET = HERE.parent / "kubernetes" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by deploy/prometheus/render_prometheusrule.py; do not edit.
# Prometheus Operator: your Prometheus may select rules by label (prometheus.spec.ruleSelector, e.g.
# release: kube-prometheus-stack): add that label under metadata.labels.
"""


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings; no line folding (it would split `{{ ... }}` templates)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(alerts: dict[str, Any]) -> str:
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "mesh-analyzer",
            "labels": {"app.kubernetes.io/name": "mesh-analyzer", "app.kubernetes.io/part-of": "mesh-log-analyzer"},
        },
        "spec": {"groups": alerts["groups"]},
    }
    return HEADER + yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)


def main() -> int:
    TARGET.write_text(render(yaml.safe_load(SOURCE.read_text(encoding="utf-8"))), encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
