"""docker-compose.yml, deploy/prometheus.yml and the Grafana dashboard agree with each other and
with the code: services, volumes and mounted files exist, Prometheus scrapes the ports the API and
the worker serve metrics on, and every panel's PromQL names a series the code exports (and is
written out in docs/operating.md, "Metrics and logs"). `docker-compose config` runs too where it
is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "distill.json").read_text())


def exported_series() -> set[str]:
    """Every series name the API and the worker can expose."""
    from prometheus_client import REGISTRY

    import app.inference.metrics  # registers the predict metrics
    import app.kit.metrics  # noqa: F401  (registers the HTTP metrics)
    import worker.metrics  # noqa: F401  (registers the worker's)
    from app.jobs.metrics import JobsCollector

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    families = [*REGISTRY.collect(), *JobsCollector().describe()]
    return {f.name + suffix for f in families for suffix in suffixes[f.type]
            if f.name.startswith(("distill_", "http_"))} | {"up"}


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]


def test_services_volumes_and_files_refer_to_each_other() -> None:
    services: dict[str, Any] = COMPOSE["services"]
    declared_volumes = set(COMPOSE["volumes"])
    host_ports: list[str] = []
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", []):
            assert dependency in services, (name, dependency)
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in declared_volumes, (name, source)
        host_ports += [str(p).split(":")[0] for p in service.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), host_ports
    # Flower watches the broker the API and the worker use
    broker = services["worker"]["environment"]["DISTILL_BROKER_URL"]
    assert f"--broker={broker}" in services["flower"]["command"]


def test_prometheus_scrapes_the_ports_the_services_serve_metrics_on() -> None:
    services = COMPOSE["services"]
    targets = {c["job_name"]: c["dns_sd_configs"][0] for c in PROMETHEUS["scrape_configs"]}
    api_port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    assert targets["distill-api"]["names"] == ["api"]
    assert str(targets["distill-api"]["port"]) == api_port
    worker_port = services["worker"]["environment"]["DISTILL_WORKER_METRICS_PORT"]
    assert targets["distill-worker"]["names"] == ["worker"]
    assert str(targets["distill-worker"]["port"]) == worker_port
    assert worker_port in [str(p) for p in services["worker"]["expose"]]
    mounted = [m for m in services["prometheus"]["volumes"] if "prometheus.yml" in m]
    assert mounted == ["./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"]


def test_every_panel_queries_exported_series_and_is_in_the_docs() -> None:
    known = exported_series()
    page = (ROOT / "docs" / "operating.md").read_text()
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        without_labels = re.sub(r"\{[^}]*\}", "", expr)
        names = set(re.findall(r"\b((?:distill|http)_[a-z_]+|up)\b", without_labels))
        assert names and names <= known, (expr, names - known)
        assert f"`{expr}`" in page, expr
    # Every metric the code exports is on some panel
    used = {n for e in exprs for n in re.findall(r"\b(?:distill|http)_[a-z_]+", e)}
    bases = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in known - {"up"}} <= bases


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed")
def test_docker_compose_config_validates() -> None:
    for args in ([], ["--profile", "monitoring"]):
        subprocess.run(["docker-compose", *args, "config", "-q"], cwd=ROOT, check=True)
