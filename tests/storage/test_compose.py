"""`docker-compose.yml` (no docker here to run it): MinIO is the store the API and the workers
share, and they share no volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_compose_points_the_api_and_workers_at_minio_and_shares_no_folder() -> None:
    spec: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    minio = services["minio"]
    assert minio["command"][:2] == ["server", "/data"]
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["DISTILL_STORAGE_URL"].startswith("s3://"), name
        assert env["DISTILL_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["minio"]["condition"] == "service_healthy"
    api_volumes = {v.split(":")[0] for v in services["api"].get("volumes", [])}
    worker_volumes = {v.split(":")[0] for v in services["worker"].get("volumes", [])}
    assert not api_volumes & worker_volumes
    assert set(spec["volumes"]) >= api_volumes | {"minio-data"}
