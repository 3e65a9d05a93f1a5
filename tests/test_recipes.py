"""The cluster recipes hold what the Kubernetes API and docker require of them (issue 26).

No cluster is needed: the manifests are parsed and checked field by field against the rules the
API enforces at admission (batch/v1 Job, apps/v1 StatefulSet, v1 Service), and the Dockerfile
against what the image must hold. The recipes' commands are run against a real PostgreSQL in
tests/test_cluster.py (slow)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "examples" / "kubernetes"
MANIFEST = KUBE / "autovae-search.yaml"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def _pods(docs):
    """(owner name, pod spec) of every pod template."""
    for d in docs:
        if d["kind"] in ("Job", "StatefulSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def _containers(spec):
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_object_has_the_fields_the_api_requires(docs):
    kinds = {"Service": "v1", "StatefulSet": "apps/v1", "PersistentVolumeClaim": "v1",
             "Job": "batch/v1"}
    for d in docs:
        assert d["apiVersion"] == kinds[d["kind"]], d["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"])
    for owner, spec in _pods(docs):
        names = [c["name"] for c in _containers(spec)]
        assert len(names) == len(set(names)), owner
        for c in _containers(spec):
            assert c.get("image"), (owner, c["name"])
            assert c.get("command") or c.get("args"), (owner, c["name"])
            for var in c.get("env", []):
                assert ("value" in var) != ("valueFrom" in var), (owner, var)
                assert isinstance(var.get("value", ""), str), (owner, var)  # quoted numbers


def test_jobs_restart_policies_are_valid(docs):
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
    assert set(jobs) == {"autovae-create-study", "autovae-workers"}
    for name, job in jobs.items():
        spec, policy = job["spec"], job["spec"]["template"]["spec"]["restartPolicy"]
        assert policy in ("Never", "OnFailure"), name  # a Job's pods may not be Always
        if "backoffLimitPerIndex" in spec:  # the API's rules for per-index backoff
            assert policy == "Never", f"{name}: backoffLimitPerIndex needs restartPolicy Never"
            assert spec["completionMode"] == "Indexed", name
            assert spec.get("maxFailedIndexes", 0) <= spec["completions"], name
    workers = jobs["autovae-workers"]["spec"]
    assert workers["completionMode"] == "Indexed" and workers["backoffLimitPerIndex"] >= 1
    assert 1 <= workers["parallelism"] <= workers["completions"]
    (worker,) = jobs["autovae-workers"]["spec"]["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1  # one worker per GPU
    assert '--worker "${JOB_COMPLETION_INDEX}"' in " ".join(worker["command"])


def test_the_password_comes_from_the_secret_the_recipe_creates(docs):
    assert "Secret" not in {d["kind"] for d in docs}, \
        "a Secret in the manifest would replace the one made by 'kubectl create secret'"
    made = re.findall(r"kubectl create secret generic (\S+) --from-literal=(\w+)=",
                      MANIFEST.read_text())
    assert made == [("autovae-db", "password")]
    doc = (ROOT / "docs" / "distributed.md").read_text()
    assert "kubectl create secret generic autovae-db --from-literal=password=" in doc
    refs = [(var["name"], var["valueFrom"]["secretKeyRef"]) for _, spec in _pods(docs)
            for c in _containers(spec) for var in c.get("env", []) if "valueFrom" in var]
    assert len(refs) == 3  # PostgreSQL's, the study creator's and the workers' passwords
    for name, ref in refs:
        assert (ref["name"], ref["key"]) == made[0], (name, ref)
        assert name in ("PGPASSWORD", "POSTGRES_PASSWORD")
    assert "password" not in " ".join(" ".join(c["command"]) for _, spec in _pods(docs)
                                       for c in _containers(spec) if "command" in c)


def test_services_selectors_and_volumes_agree(docs):
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    (db,) = [d for d in docs if d["kind"] == "StatefulSet"]
    labels = db["spec"]["template"]["metadata"]["labels"]
    assert db["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert db["spec"]["serviceName"] in services
    assert services[db["spec"]["serviceName"]]["spec"]["selector"].items() <= labels.items()
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for owner, spec in _pods(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, owner
        for c in _containers(spec):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes or owner == "autovae-db", (owner, mount)


def test_the_jobs_wait_for_the_database_and_the_workers_for_the_study(docs):
    host = None
    for owner, spec in _pods(docs):
        if owner == "autovae-db":
            continue
        (init,) = spec["initContainers"]
        script = " ".join(init["command"])
        assert "pg_isready" in script and re.search(r"timeout \d+ ", script), owner
        env = {v["name"]: v.get("value") for v in init["env"]}
        host = env["AUTOVAE_DB_HOST"]
        main_env = {v["name"]: v.get("value") for v in spec["containers"][0]["env"]}
        assert main_env["AUTOVAE_DB_HOST"] == host and host in {
            d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    (worker,) = [spec for owner, spec in _pods(docs) if owner == "autovae-workers"]
    command = shlex.split(" ".join(worker["containers"][0]["command"][2:]))
    wait = float(command[command.index("--wait") + 1])
    assert 60 <= wait <= 3600  # bounded: a study that never comes is said, not waited forever


def test_one_image_and_the_dockerfile_that_builds_it(docs):
    images = {c["image"] for owner, spec in _pods(docs) if owner != "autovae-db"
              for c in _containers(spec)}
    assert len(images) == 1
    (image,) = images
    dockerfile = (KUBE / "Dockerfile").read_text()
    assert f"-t {image} ." in dockerfile and f"-t {image} ." in MANIFEST.read_text()
    steps = [line.split()[0] for line in dockerfile.splitlines()
             if line and not line.startswith((" ", "#"))]
    assert steps[0] == "FROM" and "bookworm" in dockerfile.splitlines()[
        [i for i, line in enumerate(dockerfile.splitlines()) if line.startswith("FROM")][0]]
    assert re.search(r"apt-get install .*dataset-fashion-mnist.*postgresql-client", dockerfile)
    assert "COPY pyproject.toml README.md LICENSE" in dockerfile and "COPY src" in dockerfile
    assert re.search(r'pip install "\.\[search,postgres\]"', dockerfile)
    assert "load_data('fashion-mnist')" in dockerfile  # the data is checked at build time
    assert "USER autovae" in dockerfile
    for copied in ("pyproject.toml", "README.md", "LICENSE", "src"):
        assert (ROOT / copied).exists(), copied
