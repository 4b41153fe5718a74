"""`streamjob ui --kube` and `streamjob savepoint --kube` on the real cluster: the operator runs
a wordcount StreamJob (checkpoints in MinIO); its status says how to open the dashboard; the
command's local proxy reaches the coordinator pod through the API server's port-forward with
the token from the job's Secret, serves the dashboard and the live API; a savepoint is taken
through the same port-forward."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest
from sjenv import (
    REPO,
    Jobs,
    helm_install,
    helm_uninstall,
    is_ready,
    poll_until,
    s3_env,
    start_minio,
    storage_secret,
    wordcount_job,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# ~8 minutes of input: the job runs for the whole test.
RECORDS, WORDS, RATE = 300_000, 100, 600


@pytest.fixture(scope="module")
def ui_jobs(kube):
    from devcluster.testing import kubeconfig_path

    minio = start_minio(kube.core)
    try:
        rel = helm_install(kube.core, kubeconfig_path(), kube.image, prefix="e2e-ui")
        try:
            storage_secret(kube.core, rel.jobs_ns, "minio-creds", s3_env(minio))
            yield Jobs(kube.api, rel.jobs_ns), kubeconfig_path()
        finally:
            helm_uninstall(kube.core, rel)
    finally:
        minio.close()


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read().decode()


def test_dashboard_and_savepoint_of_a_job_in_kubernetes(ui_jobs):
    jobs, kubeconfig = ui_jobs
    jobs.create(wordcount_job("wc", records=RECORDS, words=WORDS, rate=RATE))
    body = jobs.wait("wc", lambda b: is_ready(b) and (b.get("status") or {}).get(
        "lastCheckpoint"), 300, "Ready with a checkpoint")
    target = f"{jobs.ns}/wc"
    assert body["status"]["dashboard"] == f"streamjob ui --kube {target}"

    env = dict(os.environ, KUBECONFIG=kubeconfig,
               PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("worker", "operator", "")))
    proxy = subprocess.Popen([sys.executable, "-m", "streamjob", "ui", "--kube", target],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        line = proxy.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, f"no address from streamjob ui --kube: {line!r}"
        base = found.group(0)

        status, page = get(base + "ui/")
        assert status == 200 and "<title>wc · streamjob</title>" in page
        assert 'data-field="state">RUNNING<' in page
        job = json.loads(get(base + "api/v1/job")[1])
        assert job["name"] == "wc" and job["state"] == "RUNNING" and job["parallelism"] == 2
        # the checkpoint history page lists the checkpoints the coordinator completed
        done = [h["id"] for h in json.loads(get(base + "api/v1/checkpoints")[1])["checkpoints"]
                if h["status"] == "COMPLETED"]
        assert done
        assert poll_until(lambda: f'href="/ui/checkpoints/{done[-1]}"' in get(
            base + "ui/checkpoints")[1], 30)
        status, detail = get(base + f"ui/checkpoints/{done[-1]}")
        assert status == 200 and '<div class="timeline" id="timeline"><svg' in detail
    finally:
        proxy.terminate()
        proxy.wait(10)

    out = subprocess.run([sys.executable, "-m", "streamjob", "savepoint", "--kube", target],
                         env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    uri = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"s3://bucket/checkpoints/[\w-]+/savepoints/sp-\d+", uri), uri
    job = jobs.get("wc")
    assert is_ready(job) and job["status"]["phase"] == "Running"  # no --stop: it runs on
    jobs.delete("wc")
