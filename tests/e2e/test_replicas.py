"""Many GPUs, one queue, for real: Debian's PostgreSQL, two `bentoml serve` replicas on the demo
model sharing one data folder and one model store (ALICE_DATABASE_URL), and nginx with
deploy/nginx.conf's TLS server round-robin in front of them."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from harness.environment import ROOT, alice_environment
from harness.ports import free_port
from harness.server import ServerProcess
from tests.e2e.test_tls import NGINX, nginx_config, wait_for
from tests.postgres_server import fresh_database, postgres_bin, postgres_server

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(postgres_bin() is None or not Path(NGINX).exists(),
                       reason="PostgreSQL and nginx are installed by `make test-tools`"),
]

KEY = "replicas-test-key"
LEASE_S = 5  # short for the test; heartbeats come every 0.25 s even on a loaded machine
TINY = {"width": 64, "height": 64, "steps": 4}
LONG = {"width": 256, "height": 256, "steps": 150}  # seconds on the CPU: long enough to catch running


@dataclass
class Cluster:
    base: str  # nginx, HTTPS
    verify: object
    replicas: dict[str, ServerProcess]
    database: str

    def client(self, replica: str | None = None) -> httpx.Client:
        """Through nginx, or straight to one replica."""
        if replica:
            return httpx.Client(base_url=self.replicas[replica].url, headers={"X-Api-Key": KEY}, timeout=120)
        return httpx.Client(base_url=self.base, headers={"X-Api-Key": KEY}, verify=self.verify, timeout=300)

    def job(self, job_id: str, replica: str) -> dict:
        answer = self.client(replica).get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    authority = tmp / "tls"
    made = subprocess.run([sys.executable, "-m", "alice", "tls", "init", "--dir", str(authority), "--host", "127.0.0.1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert made.returncode == 0, made.stderr
    import ssl

    trusting = ssl.create_default_context(cafile=str(authority / "ca.pem"))
    with postgres_server() as server_url, alice_environment(tmp, {}) as root:
        database = fresh_database(server_url)
        settings = {"ALICE_API_KEYS": KEY, "ALICE_DATABASE_URL": database, "ALICE_JOB_LEASE_S": str(LEASE_S),
                    "ALICE_MAX_BATCH": "1"}
        replicas: dict[str, ServerProcess] = {}
        try:
            for name in ("r0", "r1"):  # both start at once: the schema is made once, under a lock
                replicas[name] = ServerProcess(root / f"{name}.log", ALICE_REPLICA_NAME=name,
                                               BENTOML_HOME=str(replica_home(root, name)), **settings)
            for replica in replicas.values():
                replica.wait_ready()
            http_port, https_port = free_port(), free_port()
            conf = nginx_config(tmp, [replica.port for replica in replicas.values()], http_port, https_port, authority)
            conf.write_text(conf.read_text().replace("least_conn;", ""))  # round-robin: each replica gets requests
            proxy = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            try:
                base = f"https://127.0.0.1:{https_port}"

                def answering() -> bool:
                    assert proxy.poll() is None, f"nginx exited: {(tmp / 'error.log').read_text()}"
                    return httpx.get(f"{base}/health", verify=trusting, timeout=2).status_code == 200

                wait_for(answering)
                yield Cluster(base, trusting, replicas, database)
            finally:
                proxy.terminate()
                proxy.wait(30)
        finally:
            for replica in replicas.values():
                replica.close()


def replica_home(root: Path, name: str) -> Path:
    """A BentoML home of the replica's own whose model store is the shared one, as
    deploy/systemd/alice@.service lays them out: BentoML keeps its metrics files in
    $BENTOML_HOME/prometheus_multiproc_dir and empties that folder at every start, so replicas
    sharing one home would wipe and sum each other's metrics."""
    home = root / f"home-{name}"
    home.mkdir()
    (home / "models").symlink_to(root / "bentoml" / "models")
    return home


def chat(client: httpx.Client, prompt: str) -> httpx.Response:
    """SAM's call: a chat completion whose answer carries the image URLs."""
    return client.post("/chat/completions", json={
        "model": "sd/alice-demo", "messages": [{"role": "user", "content": prompt}], "metadata": TINY,
    })


def test_eight_sam_clients_at_once_through_nginx(cluster):
    with cluster.client() as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda index: chat(client, f"shape number {index}"), range(8)))
        assert [answer.status_code for answer in answers] == [200] * 8, [a.text for a in answers]
        urls = [url for answer in answers for url in answer.json()["choices"][0]["message"]["image_urls"]]
        assert len(urls) == 8
        for url in urls:  # every image answers through nginx, whichever replica drew it
            assert url.startswith(f"{cluster.base}/images/")
            image = client.get(url)
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        ids = [answer.json()["choices"][0]["message"]["metadata"]["job_id"] for answer in answers]
        jobs = {job["id"]: job for job in client.get("/v1/jobs").json()["data"]}
    assert {jobs[job_id]["replica"] for job_id in ids} == {"r0", "r1"}  # both GPUs drew
    assert all(jobs[job_id]["state"] == "succeeded" for job_id in ids)


def test_a_job_submitted_on_one_replica_is_read_and_cancelled_on_the_other(cluster):
    submitted = cluster.client("r0").post("/v1/jobs", json={"prompt": "a long one", **LONG})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    seen = cluster.job(job_id, "r1")
    assert seen["id"] == job_id and seen["state"] in ("queued", "running")
    # Its progress shows on the replica that did not take it, as it runs.
    wait_for(lambda: cluster.job(job_id, "r1")["step"] >= 2, timeout=120)
    running = cluster.job(job_id, "r1")
    runner, other = running["replica"], "r1" if running["replica"] == "r0" else "r0"
    assert running["state"] == "running" and cluster.job(job_id, other)["replica"] == runner
    # Cancelled on the replica that does not run it, the runner's own count read just before.
    at_cancel = cluster.job(job_id, runner)["step"]
    cancelled = cluster.client(other).delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200, cancelled.text
    wait_for(lambda: cluster.job(job_id, "r0")["state"] == "cancelled", timeout=120)
    ended = cluster.job(job_id, runner)
    assert ended["error_code"] == "cancelled" and ended["images"] == []
    # It reached the running replica at once (LISTEN/NOTIFY), whatever a step takes on this
    # machine: the job stopped at its next step, or the one after if a step ended in between.
    assert ended["step"] <= at_cancel + 2, (at_cancel, ended["step"])


def gauge(client: httpx.Client, name: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_each_replicas_gauges_are_its_own_and_the_shared_depth_is_cluster_wide(cluster):
    """alice_queue_depth is each replica's own line (sum() over replicas counts the cluster once);
    alice_shared_queue_depth is the same on every replica (read with max())."""
    with cluster.client("r0") as r0, cluster.client("r1") as r1:
        long_ones = [r0.post("/v1/jobs", json={"prompt": f"busy {n}", **LONG}).json()["id"] for n in range(2)]
        wait_for(lambda: all(cluster.job(job_id, "r1")["state"] == "running" for job_id in long_ones), timeout=120)
        queued = [r1.post("/v1/jobs", json={"prompt": f"waiting {n}", **TINY}).json()["id"] for n in range(3)]
        try:
            wait_for(lambda: gauge(r0, "alice_shared_queue_depth") == 3 == gauge(r1, "alice_shared_queue_depth"))
            assert gauge(r0, "alice_queue_depth") == 0 == gauge(r1, "alice_queue_depth")
            assert gauge(r0, "alice_jobs_running") == 1 == gauge(r1, "alice_jobs_running")  # one job each
        finally:
            for job_id in queued + long_ones:
                r0.delete(f"/v1/jobs/{job_id}")
            wait_for(lambda: all(cluster.job(job_id, "r0")["state"] == "cancelled" for job_id in queued + long_ones),
                     timeout=120)


def test_kill_9_of_the_replica_running_a_job(cluster):
    """Its job fails (interrupted, not retried) within the lease; the jobs queued behind run on the other."""
    with cluster.client("r0") as r0, cluster.client("r1") as r1:
        long_ones = [r0.post("/v1/jobs", json={"prompt": f"long {n}", **LONG}).json()["id"] for n in range(2)]
        wait_for(lambda: all(cluster.job(job_id, "r1")["state"] == "running" for job_id in long_ones), timeout=120)
        queued = [r1.post("/v1/jobs", json={"prompt": f"behind {n}", **TINY}).json()["id"] for n in range(3)]
        assert all(cluster.job(job_id, "r0")["state"] == "queued" for job_id in queued)  # both GPUs are busy
        victim_job = long_ones[0]
        victim = cluster.job(victim_job, "r0")["replica"]
        survivor = "r1" if victim == "r0" else "r0"
        cluster.replicas[victim].kill()  # SIGKILL to every process of that server
        died = time.monotonic()
        wait_for(lambda: cluster.job(victim_job, survivor)["state"] == "failed", timeout=LEASE_S + 30)
        noticed = time.monotonic() - died
        failed = cluster.job(victim_job, survivor)
        assert failed["error_code"] == "interrupted" and failed["replica"] == victim and failed["images"] == []
        assert noticed < LEASE_S + 10, f"the dead replica's job failed {noticed:.1f} s after it died"
        # The survivor's own long job need not finish for this test: cancel it, then the queue drains.
        r = cluster.client(survivor)
        r.delete(f"/v1/jobs/{long_ones[1]}")
        wait_for(lambda: all(cluster.job(job_id, survivor)["state"] == "succeeded" for job_id in queued), timeout=120)
        assert {cluster.job(job_id, survivor)["replica"] for job_id in queued} == {survivor}
        with psycopg.connect(cluster.database) as db:  # no job ran twice, none is left running
            assert db.execute("SELECT count(*) FROM alice_jobs WHERE state = 'running'").fetchone()[0] == 0
