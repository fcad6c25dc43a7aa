"""Docker Compose, nginx and Kubernetes files: they agree with the image and with ALICE.

No Docker engine or cluster here: the files are parsed and checked against the image's
layout (user, paths, port, health) and against ALICE's settings.
"""

from __future__ import annotations

import re

import yaml

from tests.deploy.conftest import DEPLOY, assert_real_settings, bentofile, bentofile_env

DATA = "/home/bentoml/data"
STORE = "/home/bentoml/bento/models"  # the Bento's model store in the image
SEED_MOUNT = "/home/bentoml/store"  # an empty folder of the image's user, for the seeder
SEED_COMMAND = ["sh", "/home/bentoml/bento/src/deploy/seed-models.sh", SEED_MOUNT]
IMAGE_UID = 1034


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text(encoding="utf-8"))


def mounts(service: dict) -> dict[str, str]:
    """container path -> volume name."""
    pairs = (volume.split(":")[:2] for volume in service.get("volumes", []))
    return {target: source for source, target in pairs}


def test_paths_match_the_image() -> None:
    assert bentofile_env("ALICE_DATA_DIR") == DATA
    assert "deploy/seed-models.sh" in bentofile()["include"]


def test_compose_runs_alice_on_the_gpus_with_data_and_model_volumes() -> None:
    compose = load("docker-compose.yml")
    alice, seed = compose["services"]["alice"], compose["services"]["models-seed"]
    assert alice["image"] == seed["image"] == "alice:latest"
    assert alice["ports"] == ["3000:3000"] and alice["restart"] == "unless-stopped"
    assert mounts(alice) == {DATA: "alice-data", STORE: "alice-models"}
    assert set(compose["volumes"]) == {"alice-data", "alice-models"}
    devices = alice["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    # The model volume is filled from the image before ALICE starts, on every `up`.
    assert seed["command"] == SEED_COMMAND and mounts(seed) == {SEED_MOUNT: "alice-models"}
    assert alice["depends_on"] == {"models-seed": {"condition": "service_completed_successfully"}}
    assert _seconds(alice["stop_grace_period"]) > 60  # the running job may take 60 s to finish
    assert_real_settings(set(alice["environment"]), "docker-compose.yml")
    assert alice["environment"]["ALICE_API_KEYS"].startswith("${ALICE_API_KEYS:?")  # no open server by accident


def test_multi_gpu_compose_gives_each_server_one_gpu_and_shares_the_queue_images_and_models() -> None:
    compose = load("docker-compose.multi-gpu.yml")
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:") and "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    servers = {name: service for name, service in compose["services"].items() if name.startswith("alice-gpu")}
    assert len(servers) >= 2
    gpus, data_volumes, replica_names = [], [], []
    for name, service in servers.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and len(devices[0]["device_ids"]) == 1
        gpus.append(devices[0]["device_ids"][0])
        volume_by_path = mounts(service)
        data_volumes.append(volume_by_path[DATA])
        assert volume_by_path[f"{DATA}/images"] == "alice-images"
        assert volume_by_path[f"{DATA}/inputs"] == "alice-inputs"  # any replica may run an img2img job
        assert volume_by_path[STORE] == "alice-models"
        assert service["depends_on"] == {"models-seed": {"condition": "service_completed_successfully"},
                                         "postgres": {"condition": "service_healthy"}}
        assert_real_settings(set(service["environment"]), f"docker-compose.multi-gpu.yml {name}")
        assert service["environment"]["ALICE_DATABASE_URL"].startswith("postgresql://alice:${POSTGRES_PASSWORD:?")
        assert service["environment"]["ALICE_DATABASE_URL"].endswith("@postgres/alice")
        replica_names.append(service["environment"]["ALICE_REPLICA_NAME"])
    assert len(set(gpus)) == len(gpus) and len(set(data_volumes)) == len(data_volumes)
    assert len(set(replica_names)) == len(replica_names)
    assert mounts(compose["services"]["models-seed"]) == {SEED_MOUNT: "alice-models"}
    balancer = compose["services"]["lb"]
    assert balancer["depends_on"] == {name: {"condition": "service_healthy"} for name in servers}
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in balancer["volumes"]
    upstream = re.findall(r"^\s*server\s+([\w.-]+):(\d+);", (DEPLOY / "nginx.conf").read_text(), re.MULTILINE)
    assert sorted(upstream) == sorted((name, "3000") for name in servers)


def test_nginx_waits_as_long_as_sam_and_streams_progress() -> None:
    conf = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    assert "least_conn;" in conf
    assert int(re.search(r"proxy_read_timeout (\d+)s;", conf).group(1)) > 600
    assert "proxy_buffering off;" in conf
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in conf
    # The client's own Host is never passed on as the proxy's X-Forwarded-Host (nor a header
    # the client sent itself): image URLs on a host of the client's choosing. The guide tells
    # to set ALICE_PUBLIC_URL behind the balancer instead.
    forwarded_host = re.findall(r"proxy_set_header\s+X-Forwarded-Host\s+(.*);", conf, re.IGNORECASE)
    assert forwarded_host == ['""'], forwarded_host
    guide = (DEPLOY.parent / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "ALICE_PUBLIC_URL=https://" in guide and "X-Forwarded-Host" in guide


def test_nginx_speaks_only_modern_tls_and_redirects_plain_http() -> None:
    """tests/e2e/test_tls.py runs this file's TLS block for real; the protocol list is read here,
    since this machine's OpenSSL refuses TLS 1.0/1.1 on both sides whatever nginx allows."""
    conf = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    assert re.findall(r"^\s*ssl_protocols\s+(.*);", conf, re.MULTILINE) == ["TLSv1.2 TLSv1.3"]
    plain, secure = re.split(r"^server \{", conf, flags=re.MULTILINE)[1:]
    assert "listen 80;" in plain and "return 301 https://$host$request_uri;" in plain and "proxy_pass" not in plain
    assert "listen 443 ssl;" in secure and "proxy_pass http://alice;" in secure


def test_kubernetes_runs_one_gpu_per_pod_with_shared_images_and_models() -> None:
    docs = {(doc["kind"], doc["metadata"]["name"]): doc
            for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "alice.yaml").read_text(encoding="utf-8"))}
    for claim in ("alice-images", "alice-inputs", "alice-models"):
        assert docs[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    stateful = docs[("StatefulSet", "alice")]["spec"]
    pod = stateful["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == IMAGE_UID
    assert pod["terminationGracePeriodSeconds"] > 60
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["ports"] == [{"name": "http", "containerPort": 3000}]
    assert container["startupProbe"]["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    by_path = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert by_path == {DATA: "data", f"{DATA}/images": "images", f"{DATA}/inputs": "inputs", STORE: "models"}
    claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"]}
    assert claims == {"images": "alice-images", "inputs": "alice-inputs", "models": "alice-models"}
    assert [template["metadata"]["name"] for template in stateful["volumeClaimTemplates"]] == ["data"]
    (seed,) = pod["initContainers"]
    assert seed["command"] == SEED_COMMAND
    assert seed["volumeMounts"] == [{"name": "models", "mountPath": SEED_MOUNT}]
    assert_real_settings({env["name"] for env in container["env"]}, "kubernetes/alice.yaml")
    env = {item["name"]: item for item in container["env"]}
    # One queue in the manifest's PostgreSQL, each pod named after itself in the records.
    assert env["ALICE_DATABASE_URL"]["value"] == "postgresql://alice:$(DB_PASSWORD)@alice-postgres/alice"
    assert list(env).index("DB_PASSWORD") < list(env).index("ALICE_DATABASE_URL")  # $(...) sees only earlier ones
    assert env["ALICE_REPLICA_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    postgres = docs[("StatefulSet", "alice-postgres")]["spec"]
    assert docs[("Service", "alice-postgres")]["spec"]["selector"] == postgres["selector"]["matchLabels"]
    (database,) = postgres["template"]["spec"]["containers"]
    assert {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "alice", "key": "db-password"}}} \
        in database["env"]
    service = docs[("Service", "alice")]["spec"]
    assert service["selector"] == stateful["selector"]["matchLabels"]
    assert service["ports"][0]["targetPort"] == "http"


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)
