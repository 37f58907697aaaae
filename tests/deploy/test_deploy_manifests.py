"""Offline checks of the Kubernetes manifests in deploy/k8s: every overlay renders, validates against the
Kubernetes (kubernetes-validate, strict) and KubeRay (CRD OpenAPI, made strict) schemas, and its objects refer to
each other correctly; the settings the code reads are what the pods get; no real credential is in the repo."""

from __future__ import annotations

import base64
import copy
import fnmatch
import functools
import hashlib
import importlib.util
import os
import re
import shlex
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "gpu", "external-db")  # keep in step with conftest.py
ALL = ("base", *OVERLAYS)
K8S_VERSION = "1.33.0"
CRD_DIR = K8S / "crds"
PLACEHOLDERS = {"CHANGE_ME"}

# The settings contract (DESIGN.md, "Contract details"): names the code reads, exactly.
DATABASE_URL = "VARSWEEP_DATABASE_URL"
OPTUNA_URL = "VARSWEEP_OPTUNA_URL"
TRACKING_URI = "MLFLOW_TRACKING_URI"
VARSWEEP_ENV = {DATABASE_URL, OPTUNA_URL}
SECRET_ONLY_ENV = {DATABASE_URL, OPTUNA_URL, "MLFLOW_BACKEND_STORE_URI", "POSTGRES_PASSWORD"}
PYPROJECT = REPO / "pyproject.toml"
GPU_REGISTRY_IMAGE = "registry.example.com/varsweep"

# Environment variables the manifests set on purpose that are not varsweep settings (sweep/settings.py reads the
# VARSWEEP_* names and MLFLOW_TRACKING_URI / RAY_ADDRESS): each with the reason it is set. Anything else a container
# gets is a typo or a leftover. test_library_env_allow_list_has_no_stale_entry keeps this list honest.
LIBRARY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "mlflow client: bounded retries, so an unreachable server fails in seconds "
    "and the sweep spools instead of stalling its trials (ECOSYSTEM.md)",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "mlflow client: the same bound",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "mlflow client: the same bound, per request",
    "MLFLOW_BACKEND_STORE_URI": "mlflow server: --backend-store-uri from the environment (the password stays off "
    "the process list)",
    "HF_HOME": "huggingface_hub/transformers: the shared cache on the varsweep-models volume",
    "HF_HUB_OFFLINE": "huggingface_hub: the offline switch (no Hub call; load from HF_HOME only)",
    "HF_TOKEN": "huggingface_hub: optional token for gated checkpoints, from the optional Secret varsweep-hf",
    "RAY_USAGE_STATS_ENABLED": "ray: no usage reporting from clusters that often have no egress",
    "POSTGRES_USER": "postgres image: the superuser it creates on first start",
    "POSTGRES_PASSWORD": "postgres image: that user's password",
    "POSTGRES_DB": "postgres image: the database it creates (the store's and the study's)",
    "PGDATA": "postgres image: data directory below the volume root (initdb refuses lost+found)",
}


def cli_parser():
    """The sweep CLI's own argparse parser (sweep.cli.build_parser): what `python sweep/main.py` accepts."""
    from sweep.cli import build_parser

    return build_parser()


def parse_entrypoint(entrypoint: str):
    """Parse a `python sweep/main.py ...` command line with the real parser; fail the test on what it rejects."""
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "sweep/main.py"], f"not a sweep command: {entrypoint}"
    parser = cli_parser()
    options = {s for action in parser._actions for s in action.option_strings}
    # argparse accepts unambiguous abbreviations (--dev for --device): a manifest spells flags out in full, so that
    # a new flag can never make its line ambiguous.
    spelled = {a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")}
    assert spelled <= options, f"not flags of sweep/main.py (abbreviated or unknown): {spelled - options}"
    try:
        return parser.parse_args(argv[2:])
    except Exception as e:  # the CLI raises its CLIUsageError instead of exiting
        pytest.fail(f"sweep/main.py rejects {entrypoint!r}: {e}")


def project_version() -> str:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["version"]


# ----------------------------------------------------------------------------------------------- helpers
def objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod template) for every pod template an object carries, CRDs included."""
    spec = doc.get("spec") or {}
    kind, name = doc["kind"], doc["metadata"]["name"]
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield f"{kind}/{name}", spec["template"]
    elif kind == "CronJob":
        yield f"{kind}/{name}", spec["jobTemplate"]["spec"]["template"]
    elif kind in {"RayCluster", "RayJob"}:
        cluster = spec if kind == "RayCluster" else spec.get("rayClusterSpec")
        if cluster:
            yield f"{kind}/{name}/head", cluster["headGroupSpec"]["template"]
            for group in cluster.get("workerGroupSpecs", []):
                yield f"{kind}/{name}/{group['groupName']}", group["template"]
        if kind == "RayJob" and spec.get("submitterPodTemplate"):
            yield f"{kind}/{name}/submitter", spec["submitterPodTemplate"]


def all_templates(docs: list[dict]) -> Iterator[tuple[str, dict]]:
    for doc in docs:
        yield from pod_templates(doc)


def containers(template: dict, init: bool = True) -> list[dict]:
    spec = template["spec"]
    return list(spec.get("initContainers", []) if init else []) + list(spec["containers"])


def all_containers(docs: list[dict]) -> Iterator[tuple[str, dict]]:
    for where, template in all_templates(docs):
        for c in containers(template):
            yield f"{where}/{c['name']}", c


def secret_values(secret: dict) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def effective_env(container: dict, docs: list[dict]) -> dict[str, dict]:
    """name -> source ({"secret": (name, key)}, {"configMap": ...} or {"value": ...}) of a container's env."""
    env: dict[str, dict] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            cm = one(docs, "ConfigMap", src["configMapRef"]["name"])
            for key in cm.get("data", {}):
                env[src.get("prefix", "") + key] = {"configMap": (cm["metadata"]["name"], key)}
        if "secretRef" in src:
            secret = one(docs, "Secret", src["secretRef"]["name"])
            for key in secret_values(secret):
                env[src.get("prefix", "") + key] = {"secret": (secret["metadata"]["name"], key)}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "secretKeyRef" in ref:
            env[var["name"]] = {"secret": (ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])}
        elif "configMapKeyRef" in ref:
            env[var["name"]] = {"configMap": (ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"])}
        elif "value" in var:
            env[var["name"]] = {"value": var["value"]}
        else:
            env[var["name"]] = {"other": ref}
    return env


def selector_matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def url_password(value: str) -> str | None:
    try:
        return urlsplit(value).password if "://" in value else None
    except ValueError:
        return None


def ray_containers(docs: list[dict]) -> list[tuple[str, dict]]:
    """The long-running Ray containers (head and workers), without init containers."""
    out = []
    for doc in objects(docs, "RayCluster"):
        for where, template in pod_templates(doc):
            out += [(f"{where}/{c['name']}", c) for c in containers(template, init=False)]
    return out


def gpu_amounts(container: dict) -> list[str]:
    res = container.get("resources") or {}
    return [
        str(section["nvidia.com/gpu"])
        for section in (res.get("requests") or {}, res.get("limits") or {})
        if "nvidia.com/gpu" in section
    ]


def env_value(container: dict, docs: list[dict], var: str) -> str | None:
    """The literal value of a container's env var when it comes from a value or a ConfigMap; None otherwise."""
    source = effective_env(container, docs).get(var)
    if source is None:
        return None
    if "value" in source:
        return str(source["value"])
    if "configMap" in source:
        cm_name, key = source["configMap"]
        return str(one(docs, "ConfigMap", cm_name)["data"][key])
    return None


def mount_for(container: dict, path: str) -> dict | None:
    """The volume mount that holds `path` in a container (the longest matching mountPath)."""
    found = [
        m
        for m in container.get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    return max(found, key=lambda m: len(m["mountPath"]), default=None)


def claim_of(template: dict, volume_name: str) -> str | None:
    for v in template["spec"].get("volumes", []):
        if v["name"] == volume_name:
            return (v.get("persistentVolumeClaim") or {}).get("claimName")
    return None


def image_tag(image: str) -> str | None:
    """The tag (or digest) of an image reference; None when it has neither (which means :latest)."""
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def compose(tmp_path: Path, body: str) -> Path:
    """A throwaway kustomization in tmp_path; {k8s} is replaced by the relative path to deploy/k8s."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    k8s = Path(os.path.relpath(K8S, overlay)).as_posix()
    (overlay / "kustomization.yaml").write_text(body.replace("{k8s}", k8s), encoding="utf-8")
    return overlay


# ------------------------------------------------------------------------------------- render + structure
@pytest.mark.parametrize("name", ALL)
def test_overlay_renders_with_the_expected_objects(rendered, name):
    docs = rendered[name]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {
        ("RayCluster", "varsweep"),
        ("RayJob", "varsweep-mmvp"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("ConfigMap", "varsweep-config"),
        ("Secret", "varsweep-db"),
    }
    assert expected <= kinds, expected - kinds
    has_postgres = {("StatefulSet", "postgres"), ("Service", "postgres")} <= kinds
    assert has_postgres == (name != "external-db")
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {"varsweep"}, "everything in one namespace"
    assert [d["metadata"]["name"] for d in objects(docs, "Namespace")] == ["varsweep"]


@pytest.mark.parametrize("name", ALL)
def test_labels_on_every_object_and_pod(rendered, name):
    for doc in rendered[name]:
        labels = doc["metadata"].get("labels", {})
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "varsweep", where
        assert labels.get("app.kubernetes.io/name"), where
    for where, template in all_templates(rendered[name]):
        labels = template["metadata"]["labels"]
        assert labels.get("app.kubernetes.io/part-of") == "varsweep", where
        assert labels.get("app.kubernetes.io/name"), where


@pytest.mark.parametrize("name", ALL)
def test_every_container_sets_requests_and_limits(rendered, name):
    for where, c in all_containers(rendered[name]):
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(section) or {}), f"{where}: {section} cpu+memory"


# --------------------------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("name", ALL)
def test_core_objects_validate_against_kubernetes_schemas(rendered, name, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("kubernetes-validate tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # the schemas ship with the package
    checked = 0
    for doc in rendered[name]:
        if doc["apiVersion"].startswith("ray.io/"):
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.absolute_path)}")
        checked += 1
    assert checked >= 6


def test_kubernetes_validate_strict_rejects_a_typo(rendered):
    doc = copy.deepcopy(one(rendered["dev"], "Deployment", "mlflow"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}  # typo of readinessProbe
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _strict(schema: object) -> object:
    """Reject unknown fields: additionalProperties: false wherever a schema lists properties and does not
    preserve unknown fields (what the API server's structural pruning would silently drop)."""
    if isinstance(schema, dict):
        for key in ("properties", "patternProperties"):
            for sub in (schema.get(key) or {}).values():
                _strict(sub)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(schema.get(key), dict):
                _strict(schema[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(key) or []:
                _strict(sub)
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    return schema


@pytest.fixture(scope="session")
def crd_validators() -> dict[str, jsonschema.protocols.Validator]:
    validators = {}
    for kind, filename in (("RayCluster", "ray.io_rayclusters.yaml"), ("RayJob", "ray.io_rayjobs.yaml")):
        with open(CRD_DIR / filename, encoding="utf-8") as f:
            crd = yaml.load(f, Loader=yaml.CSafeLoader)
        assert crd["spec"]["names"]["kind"] == kind
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _strict(version["schema"]["openAPIV3Schema"])
        validators[kind] = jsonschema.Draft7Validator(schema)
    return validators


def _crd_errors(validators, doc: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validators[doc["kind"]].iter_errors(doc)
    ]


@pytest.mark.parametrize("name", ALL)
def test_ray_objects_validate_against_kuberay_crds(rendered, crd_validators, name):
    ray_docs = [d for d in rendered[name] if d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in ray_docs} == {"RayCluster", "RayJob"}
    for doc in ray_docs:
        assert doc["apiVersion"] == "ray.io/v1"
        assert _crd_errors(crd_validators, doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("RayCluster", lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("replica", 2)),
        (
            "RayCluster",
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].__setitem__("envv", []),
        ),
        ("RayCluster", lambda d: d["spec"].__setitem__("enableInTreeAutoscaling", "no")),
        ("RayJob", lambda d: d["spec"].__setitem__("shutdownAfterJobFinish", True)),
        ("RayJob", lambda d: d["spec"].__setitem__("entrypoint", ["python", "sweep/main.py"])),
    ],
)
def test_kuberay_schemas_reject_typos_and_wrong_types(rendered, crd_validators, kind, mutate):
    doc = copy.deepcopy(objects(rendered["dev"], kind)[0])
    assert _crd_errors(crd_validators, doc) == []
    mutate(doc)
    assert _crd_errors(crd_validators, doc), "the strict CRD schema must reject this"


def test_crd_copies_are_the_documented_upstream_files():
    readme = (CRD_DIR / "README.md").read_text(encoding="utf-8")
    assert "feeaf72" in readme and "Apache-2.0" in readme
    assert "Apache License" in (CRD_DIR / "LICENSE").read_text(encoding="utf-8")
    for filename in ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"):
        digest = hashlib.sha256((CRD_DIR / filename).read_bytes()).hexdigest()
        assert f"| {filename} | `{digest}` |" in readme, f"{filename} changed: refresh README's table"


# ----------------------------------------------------------------------------------------- references
@pytest.mark.parametrize("name", ALL)
def test_every_service_selects_a_pod_template(rendered, name):
    docs = rendered[name]
    templates = list(all_templates(docs))
    for svc in objects(docs, "Service"):
        selector = svc["spec"].get("selector")
        matches = [where for where, t in templates if selector_matches(selector, t["metadata"]["labels"])]
        assert matches, f"Service/{svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for where, t in templates:
                if not selector_matches(selector, t["metadata"]["labels"]):
                    continue
                ports = [p for c in containers(t, init=False) for p in c.get("ports", [])]
                assert any(target in (p.get("name"), p["containerPort"]) for p in ports), (
                    f"Service/{svc['metadata']['name']} port {target} not exposed by {where}"
                )


@pytest.mark.parametrize("name", ALL)
def test_workload_selectors_and_governing_services(rendered, name):
    docs = rendered[name]
    for kind in ("Deployment", "StatefulSet"):
        for doc in objects(docs, kind):
            assert selector_matches(
                doc["spec"]["selector"]["matchLabels"], doc["spec"]["template"]["metadata"]["labels"]
            )
    for sts in objects(docs, "StatefulSet"):
        svc = one(docs, "Service", sts["spec"]["serviceName"])
        assert svc["spec"].get("clusterIP") == "None", "a StatefulSet's governing Service is headless"


@pytest.mark.parametrize("name", ALL)
def test_env_and_volume_references_resolve(rendered, name):
    docs = rendered[name]
    secrets = {s["metadata"]["name"]: secret_values(s) for s in objects(docs, "Secret")}
    config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in objects(docs, "ConfigMap")}
    pvcs = {p["metadata"]["name"] for p in objects(docs, "PersistentVolumeClaim")}
    for where, c in all_containers(docs):
        for var in c.get("env", []):
            ref = var.get("valueFrom", {})
            for kind, store in (("secretKeyRef", secrets), ("configMapKeyRef", config_maps)):
                if kind not in ref:
                    continue
                r = ref[kind]
                if r.get("optional") and r["key"] not in store.get(r["name"], {}):
                    continue
                assert r["name"] in store, f"{where}: env {var['name']} refers to missing {r['name']}"
                assert r["key"] in store[r["name"]], f"{where}: {r['name']} has no key {r['key']}"
        for src in c.get("envFrom", []):
            for kind, store in (("configMapRef", config_maps), ("secretRef", secrets)):
                if kind in src and not src[kind].get("optional"):
                    assert src[kind]["name"] in store, f"{where}: envFrom {src[kind]['name']} missing"
    claim_templates = {
        f"StatefulSet/{s['metadata']['name']}": {
            v["metadata"]["name"] for v in s["spec"].get("volumeClaimTemplates", [])
        }
        for s in objects(docs, "StatefulSet")
    }
    for where, template in all_templates(docs):
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        volumes.update({name: {} for name in claim_templates.get(where, ())})
        for c in containers(template):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}/{c['name']}: mount of unknown volume {m['name']}"
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, f"{where}: volume {v['name']}"
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, f"{where}: volume {v['name']}"
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs, f"{where}: volume {v['name']}"


@pytest.mark.parametrize("name", ALL)
def test_every_volume_is_defined_and_used(rendered, name):
    """Each container mounts only volumes its pod defines, each at one path; each defined volume is mounted."""
    docs = rendered[name]
    claim_templates = {
        f"StatefulSet/{s['metadata']['name']}": {
            v["metadata"]["name"] for v in s["spec"].get("volumeClaimTemplates", [])
        }
        for s in objects(docs, "StatefulSet")
    }
    for where, template in all_templates(docs):
        defined = [v["name"] for v in template["spec"].get("volumes", [])]
        assert len(defined) == len(set(defined)), f"{where}: a volume name twice"
        defined_all = set(defined) | claim_templates.get(where, set())
        mounted = set()
        for c in containers(template):
            paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
            assert len(paths) == len(set(paths)), f"{where}/{c['name']}: two mounts at one path"
            for m in c.get("volumeMounts", []):
                assert m["name"] in defined_all, (
                    f"{where}/{c['name']}: mounts {m['name']}, not defined in its pod"
                )
                mounted.add(m["name"])
        assert set(defined) <= mounted, (
            f"{where}: volumes defined but never mounted: {set(defined) - mounted}"
        )


@pytest.mark.parametrize("name", ALL)
def test_ray_pods_mount_what_the_sweep_writes_and_reads(rendered, name):
    """HF_HOME lies on the shared model-cache volume in every Ray pod; the driver's working folder keeps .varsweep
    (MLflow spool, Tune's experiment folder) on a volume of the head; data is read-only on the workers."""
    docs = rendered[name]
    (cluster,) = objects(docs, "RayCluster")
    for where, template in pod_templates(cluster):
        (ray,) = [c for c in containers(template, init=False) if c["name"].startswith("ray-")]
        hf_home = env_value(ray, docs, "HF_HOME")
        assert hf_home and hf_home.startswith("/"), f"{where}: HF_HOME is not set to a path"
        mount = mount_for(ray, hf_home)
        assert mount, f"{where}: HF_HOME={hf_home} is on the container's own (ephemeral) filesystem"
        assert claim_of(template, mount["name"]) == "varsweep-models", (
            f"{where}: HF_HOME is not on varsweep-models"
        )
        offline = env_value(ray, docs, "HF_HUB_OFFLINE") == "1"
        if where.endswith("/head"):
            assert not mount.get("readOnly"), "the cache is filled through the head"
            state = mount_for(ray, f"{ray['workingDir'].rstrip('/')}/.varsweep")
            assert state and claim_of(template, state["name"]) == "varsweep-state", (
                "the driver runs in the head's workingDir and writes ./.varsweep there: it must be a volume"
            )
            assert not state.get("readOnly")
        else:
            # online, a worker downloads a checkpoint into the shared cache; offline it only reads it
            assert bool(mount.get("readOnly")) == offline, (
                f"{where}: models mount readOnly={mount.get('readOnly')}"
            )
            data = mount_for(ray, "/data")
            assert data and data.get("readOnly"), f"{where}: workers only read the benchmark data"
    pvcs = {p["metadata"]["name"]: p for p in objects(docs, "PersistentVolumeClaim")}
    assert pvcs["varsweep-state"]["spec"]["accessModes"] == ["ReadWriteOnce"], (
        "one writer: the driver on the head"
    )


@pytest.mark.parametrize("name", ALL)
def test_rayjob_targets_the_rendered_raycluster(rendered, name):
    docs = rendered[name]
    job = one(docs, "RayJob", "varsweep-mmvp")
    spec = job["spec"]
    # Pattern: submit to the long-lived cluster (see rayjob.yaml), not a cluster of its own.
    assert "rayClusterSpec" not in spec
    cluster = one(docs, "RayCluster", spec["clusterSelector"]["ray.io/cluster"])
    # KubeRay rejects these in clusterSelector mode, and a GPU entrypoint would starve behind the workers.
    assert not spec.get("backoffLimit") and not spec.get("suspend")
    assert "entrypointNumGpus" not in spec
    assert cluster["spec"]["authOptions"]["mode"] == "token"


@pytest.mark.parametrize("name", ALL)
def test_rayjob_has_a_deadline_and_bounded_submitter_retries(rendered, name):
    spec = one(rendered[name], "RayJob", "varsweep-mmvp")["spec"]
    deadline = spec.get("activeDeadlineSeconds")
    assert isinstance(deadline, int) and deadline > 0, "activeDeadlineSeconds: a positive number of seconds"
    backoff = (spec.get("submitterConfig") or {}).get("backoffLimit")
    assert isinstance(backoff, int) and 1 <= backoff <= 5, (
        "submitterConfig.backoffLimit: a few submitter retries"
    )
    assert spec["submissionMode"] == "K8sJobMode", "submitterConfig applies to the submitter Job"
    if spec.get("clusterSelector"):
        # KubeRay rejects spec.backoffLimit > 0 in clusterSelector mode, ignores shutdownAfterJobFinishes there and
        # rejects ttlSecondsAfterFinished without it: none of them may pretend to do something
        for field in (
            "backoffLimit",
            "shutdownAfterJobFinishes",
            "ttlSecondsAfterFinished",
            "deletionStrategy",
        ):
            assert not spec.get(field), f"{field} does nothing (or is rejected) in clusterSelector mode"
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never", "the submitter Job retries by new pods (backoffLimit)"
    assert len(submitter["containers"]) == 1 and "command" not in submitter["containers"][0], (
        "KubeRay fills in the submit command of the first container"
    )


@pytest.mark.parametrize("name", ALL)
def test_worker_groups_scale_from_zero(rendered, name):
    (cluster,) = objects(rendered[name], "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    options = spec["autoscalerOptions"]
    assert options["idleTimeoutSeconds"] > 0
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(options["resources"][section]), f"autoscaler {section} cpu+memory"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1, group["groupName"]
        # the autoscaler owns the count; a `replicas` in the manifest would fight it on every change
        assert "replicas" not in group, group["groupName"]
        assert group["template"]["spec"].get("automountServiceAccountToken") is False, (
            "workers need no API token"
        )
    head = spec["headGroupSpec"]["template"]["spec"]
    # the autoscaler sidecar scales the groups through the Kubernetes API with the head's ServiceAccount
    assert head.get("automountServiceAccountToken", True) is True, (
        "the head must mount its ServiceAccount token"
    )
    assert "serviceAccountName" not in head, (
        "KubeRay sets the autoscaler's ServiceAccount (named after the cluster)"
    )


@pytest.mark.parametrize("name", ALL)
def test_rayjob_entrypoint_is_the_cli_contract(rendered, name):
    docs = rendered[name]
    entrypoint = one(docs, "RayJob", "varsweep-mmvp")["spec"]["entrypoint"]
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "sweep/main.py", "--task"] and re.fullmatch(r"[a-z0-9_-]+", argv[3]), (
        entrypoint
    )
    assert (REPO / argv[1]).is_file(), "the entrypoint runs the repository's sweep/main.py from /app"
    args = parse_entrypoint(entrypoint)
    assert args.task == argv[3]
    if args.data_dir:
        for where, c in ray_containers(docs):
            assert any(
                args.data_dir.startswith(m["mountPath"].rstrip("/") + "/") for m in c.get("volumeMounts", [])
            ), f"{where} does not mount {args.data_dir}"
    # The device the sweep is told to use is the one its worker groups offer: a GPU sweep must say --device cuda
    # (with groups that scale from zero, `auto` sees no GPU at start and loads the model on CPU), a CPU cluster
    # must not ask for GPUs (the driver would wait for them and fail).
    (cluster,) = objects(docs, "RayCluster")
    groups = cluster["spec"]["workerGroupSpecs"]
    gpus_per_pod = [
        max([int(a) for a in gpu_amounts(g["template"]["spec"]["containers"][0])] or [0]) for g in groups
    ]
    if any(gpus_per_pod):
        assert args.device == "cuda", f"{name}: GPU worker groups, so the entrypoint needs --device cuda"
        # --workers defaults to the GPUs present at start (none, when scaling from zero): it must be explicit,
        # and the groups must be able to grow to that many GPUs.
        capacity = sum(n * g["maxReplicas"] for n, g in zip(gpus_per_pod, groups, strict=True))
        assert args.workers is not None and args.workers <= capacity, (args.workers, capacity)
    else:
        assert args.device == "cpu", f"{name}: no GPU worker group, so the entrypoint says --device cpu"


@pytest.mark.parametrize("name", ALL)
def test_network_policy_admits_the_database_clients(rendered, name):
    docs = rendered[name]
    templates = dict(all_templates(docs))
    for policy in objects(docs, "NetworkPolicy"):
        guarded = [
            w
            for w, t in templates.items()
            if selector_matches(policy["spec"]["podSelector"]["matchLabels"], t["metadata"]["labels"])
        ]
        assert guarded, f"NetworkPolicy/{policy['metadata']['name']} guards no pod"
        sources = [
            peer["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for peer in rule["from"]
        ]
        for where, t in templates.items():
            if any(
                DATABASE_URL in effective_env(c, docs) or "MLFLOW_BACKEND_STORE_URI" in effective_env(c, docs)
                for c in containers(t)
            ):
                assert any(selector_matches(s, t["metadata"]["labels"]) for s in sources), (
                    f"{where} needs the database but NetworkPolicy/{policy['metadata']['name']} blocks it"
                )


# ------------------------------------------------------------------------------------- settings contract
@pytest.mark.parametrize("name", ALL)
def test_ray_pods_get_the_settings_the_code_reads(rendered, name):
    docs = rendered[name]
    tracking = None
    found = ray_containers(docs)
    assert len(found) >= 2, "head and at least one worker group"
    for where, c in found:
        env = effective_env(c, docs)
        assert env[DATABASE_URL].get("secret") == ("varsweep-db", DATABASE_URL), where
        assert env[OPTUNA_URL].get("secret") == ("varsweep-db", OPTUNA_URL), where
        assert TRACKING_URI in env, where
        # RAY_ADDRESS is KubeRay's and the Jobs API's to set (the driver then joins with plain ray.init()).
        assert "RAY_ADDRESS" not in env, where
        source = env[TRACKING_URI]
        if "configMap" in source:
            cm_name, key = source["configMap"]
            tracking = one(docs, "ConfigMap", cm_name)["data"][key]
        else:
            tracking = source["value"]
        svc_url = urlsplit(tracking)
        svc = one(docs, "Service", svc_url.hostname)
        assert svc_url.scheme == "http" and svc_url.port in {p["port"] for p in svc["spec"]["ports"]}
    assert tracking == "http://mlflow:5000"


# Third-party env names we set, and where their library reads them (checked first; else the whole package).
_READERS = {
    "MLFLOW_": ("mlflow", ("environment_variables.py", "cli/__init__.py")),
    "RAY_": ("ray", ("_common/usage/usage_constants.py",)),
    "HF_": ("huggingface_hub", ("constants.py",)),
}


@functools.cache
def _package_source(package: str, files: tuple[str, ...] | None) -> str:
    spec = importlib.util.find_spec(package)
    assert spec and spec.submodule_search_locations, f"{package} is not installed"
    root = Path(list(spec.submodule_search_locations)[0])
    paths = [root / f for f in files] if files else root.rglob("*.py")
    return "\n".join(p.read_text(encoding="utf-8", errors="ignore") for p in paths if p.is_file())


@functools.cache
def _code_env_names() -> frozenset[str] | None:
    """The env names sweep.settings.Settings reads (prefix + field, or its aliases); None if not importable."""
    try:
        from sweep.settings import Settings
    except ImportError:
        return None
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add((prefix + field_name).upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
    return frozenset(names)


def test_contract_env_names_are_what_the_code_reads():
    names = _code_env_names()
    if names is None:
        pytest.skip("sweep.settings is not importable")
    assert {DATABASE_URL, OPTUNA_URL, TRACKING_URI, "RAY_ADDRESS"} <= names
    # what the manifests rely on besides those: components/gpu sets the bound of the wait for GPU workers
    assert "VARSWEEP_PLACEMENT_TIMEOUT" in names


def _env_names_set(docs: list[dict]) -> Iterator[tuple[str, str]]:
    """(where, name) of every environment variable the manifests give a container (env, envFrom, autoscaler)."""
    for where, c in all_containers(docs):
        for var in effective_env(c, docs):
            yield f"{where}/{c['name']}", var
    for cluster in objects(docs, "RayCluster"):
        options = cluster["spec"].get("autoscalerOptions") or {}
        for var in effective_env(
            {"env": options.get("env", []), "envFrom": options.get("envFrom", [])}, docs
        ):
            yield f"RayCluster/{cluster['metadata']['name']}/autoscaler", var


@pytest.mark.parametrize("name", ALL)
def test_every_env_var_is_a_setting_or_a_deliberate_library_variable(rendered, name):
    """Every variable a container gets is one sweep.settings.Settings reads, or on LIBRARY_ENV with its reason."""
    from sweep.settings import Settings  # noqa: F401  (the real settings: no skip, the check needs them)

    settings = _code_env_names()
    for where, var in _env_names_set(rendered[name]):
        assert var in settings or var in LIBRARY_ENV, (
            f"{where}: {var} is neither a varsweep setting (sweep/settings.py) nor on LIBRARY_ENV"
        )


def test_library_env_allow_list_has_no_stale_entry(rendered, kustomize, tmp_path):
    offline = compose(tmp_path, "resources: [{k8s}/base]\ncomponents: [{k8s}/components/offline]\n")
    used = {var for name in ALL for _, var in _env_names_set(rendered[name])}
    used |= {var for _, var in _env_names_set(kustomize(offline))}
    assert set(LIBRARY_ENV) <= used, f"LIBRARY_ENV lists names no manifest sets: {set(LIBRARY_ENV) - used}"
    assert not set(LIBRARY_ENV) & (_code_env_names() or set()), (
        "a setting of the code is not a library variable"
    )


@pytest.mark.parametrize("name", ALL)
def test_env_names_are_ones_their_readers_know(rendered, name):
    """VARSWEEP_* names are settings the code reads; MLFLOW_*/RAY_*/HF_* names appear in the installed library
    that reads them (its source, not imported), so a typo'd name cannot silently do nothing."""
    docs = rendered[name]
    known = VARSWEEP_ENV | (_code_env_names() or frozenset())
    for where, c in all_containers(docs):
        for var in effective_env(c, docs):
            if var.startswith("VARSWEEP_"):
                assert var in known, f"{where}: {var} is not a setting the code reads"
            for prefix, (package, files) in _READERS.items():
                if var.startswith(prefix):
                    pattern = rf"[\"']{var}[\"']"
                    assert re.search(pattern, _package_source(package, files)) or re.search(
                        pattern, _package_source(package, None)
                    ), f"{where}: {package} never reads {var}"


@pytest.mark.parametrize("name", ALL)
def test_credentials_come_from_secrets_only(rendered, name):
    docs = rendered[name]
    for cm in objects(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert key not in SECRET_ONLY_ENV and "PASSWORD" not in key.upper(), f"ConfigMap has {key}"
            assert url_password(value) is None, f"ConfigMap/{cm['metadata']['name']}:{key} holds a password"
    for where, c in all_containers(docs):
        for var, source in effective_env(c, docs).items():
            if var in SECRET_ONLY_ENV:
                assert "secret" in source, f"{where}: {var} must come from a Secret (secretKeyRef)"
            if "value" in source:
                assert url_password(str(source["value"])) is None, f"{where}: {var} inlines a password"
        for arg in [*c.get("command", []), *c.get("args", [])]:
            assert url_password(arg) is None and "$(" not in arg, f"{where}: credential on the command line"


def test_postgres_urls_agree_with_the_server(rendered):
    docs = rendered["base"]
    values = secret_values(one(docs, "Secret", "varsweep-db"))
    pg = one(docs, "StatefulSet", "postgres")
    pg_env = effective_env(pg["spec"]["template"]["spec"]["containers"][0], docs)
    port = one(docs, "Service", "postgres")["spec"]["ports"][0]["port"]
    init_sql = "\n".join(one(docs, "ConfigMap", "postgres-init")["data"].values())
    for key, database in (
        (DATABASE_URL, pg_env["POSTGRES_DB"]["value"]),
        ("MLFLOW_BACKEND_STORE_URI", "mlflow"),
    ):
        url = urlsplit(values[key])
        assert url.scheme == "postgresql+psycopg", "SQLAlchemy URL for psycopg 3"
        assert (url.hostname, url.port, url.path.lstrip("/")) == ("postgres", port, database), key
        assert url.username == values["POSTGRES_USER"] and url.password == values["POSTGRES_PASSWORD"], key
    # MLflow keeps its own database (own alembic_version); the init script creates it.
    assert re.search(r"CREATE DATABASE mlflow\b", init_sql)


def test_external_db_overlay_has_no_in_cluster_database(rendered):
    docs = rendered["external-db"]
    assert not objects(docs, "StatefulSet") and not objects(docs, "NetworkPolicy")
    assert all(d["metadata"]["name"] != "postgres" for d in docs)
    values = secret_values(one(docs, "Secret", "varsweep-db"))
    assert set(values) == {DATABASE_URL, "MLFLOW_BACKEND_STORE_URI"}
    for value in values.values():
        assert urlsplit(value).hostname != "postgres"


@pytest.mark.parametrize("name", ALL)
def test_no_real_password_in_rendered_secrets(rendered, name):
    for secret in objects(rendered[name], "Secret"):
        for key, value in secret_values(secret).items():
            if "PASSWORD" in key.upper():
                assert value in PLACEHOLDERS, (
                    f"Secret/{secret['metadata']['name']}:{key} is not a placeholder"
                )
            password = url_password(value)
            assert password is None or password in PLACEHOLDERS, f"{key} embeds a real-looking password"


_URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://([^\s:/@'\"]+):([^\s@/'\"]+)@", re.IGNORECASE)


def _looks_real(password: str) -> bool:
    """A literal that could be a password: not a placeholder, a shell/printf/template variable or an example
    of a few letters like `p` or `pass`."""
    return password not in PLACEHOLDERS and not re.match(r"^[$%<{]", password) and len(password) >= 6


def test_no_real_looking_credential_anywhere_in_deploy():
    offenders = []
    for path in DEPLOY.rglob("*"):
        if not path.is_file() or path.parent == CRD_DIR or "overlays/local" in path.as_posix():
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        for match in _URL_CREDENTIALS.finditer(text):
            if _looks_real(match.group(2)):
                offenders.append(f"{path.relative_to(REPO)}: {match.group(0)}")
        for match in re.finditer(r"(?im)^\s*([A-Z_]*PASSWORD[A-Z_]*)\s*[:=]\s*[\"']?([^\s\"'#]+)", text):
            if _looks_real(match.group(2)):
                offenders.append(f"{path.relative_to(REPO)}: {match.group(1)}")
    assert offenders == []


def test_readme_secret_command_creates_the_keys_the_pods_read(rendered):
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"--from-literal=([A-Z_]+)=", readme))
    assert documented == set(secret_values(one(rendered["base"], "Secret", "varsweep-db")))


def test_local_credentials_are_git_ignored():
    probe = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--is-inside-work-tree"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("not a git work tree")
    for path in (
        "deploy/k8s/overlays/local/secrets.env",
        "deploy/k8s/overlays/local/kustomization.yaml",
        "deploy/k8s/overlays/dev/secrets.env",
    ):
        ignored = subprocess.run(
            ["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", path], check=False
        ).returncode
        assert ignored == 0, f"{path} is not git-ignored"


# ------------------------------------------------------------------------------------- services in detail
@pytest.mark.parametrize("name", ALL)
def test_gpu_only_where_asked(rendered, name):
    docs = rendered[name]
    amounts = {where: gpu_amounts(c) for where, c in all_containers(docs)}
    workers = [(w, c) for w, c in ray_containers(docs) if "/head/" not in w]
    if name == "gpu":
        assert workers and all(gpu_amounts(c) == ["1", "1"] for _, c in workers), "one GPU per worker pod"
        others = {w: a for w, a in amounts.items() if a and w not in dict(workers)}
        assert others == {}, "only the Ray workers hold GPUs (the driver stays CPU-only)"
        for doc in objects(docs, "RayCluster"):
            for group in doc["spec"]["workerGroupSpecs"]:
                tolerations = group["template"]["spec"].get("tolerations", [])
                assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)
    else:
        assert {w: a for w, a in amounts.items() if a} == {}, f"{name} must request no GPU"
        for doc in objects(docs, "RayCluster"):
            for _, template in pod_templates(doc):
                assert "nvidia.com/gpu" not in yaml.safe_dump(template)


def test_dev_is_small(rendered):
    docs = rendered["dev"]
    (cluster,) = objects(docs, "RayCluster")
    # one worker at most, scaled from zero while a sweep runs
    assert [(g["minReplicas"], g["maxReplicas"]) for g in cluster["spec"]["workerGroupSpecs"]] == [(0, 1)]
    for where, c in all_containers(docs):
        memory = c["resources"]["limits"]["memory"]
        assert memory.endswith(("Mi", "Gi")) and (memory.endswith("Mi") or int(memory[:-2]) <= 4), where
    assert "--limit" in one(docs, "RayJob", "varsweep-mmvp")["spec"]["entrypoint"]


@pytest.mark.parametrize("name", ALL)
def test_one_varsweep_image_and_ray_version(rendered, name):
    docs = rendered[name]
    images = {c["image"] for _, c in all_containers(docs) if not c["image"].startswith("postgres:")}
    # Pinned to the project's version (pyproject.toml); the GPU image comes from a registry, in its CUDA variant.
    version = project_version()
    assert images == {f"{GPU_REGISTRY_IMAGE}:{version}-cuda" if name == "gpu" else f"varsweep:{version}"}, (
        "bump the image tags in deploy/k8s (base, overlays/dev, components/gpu) and deploy/README.md together "
        "with pyproject.toml's version"
    )
    (cluster,) = objects(docs, "RayCluster")
    constraints = REPO / "constraints.txt"
    if constraints.exists():
        pins = re.findall(r"(?im)^ray(?:\[[^\]]*\])?==([^\s;#]+)", constraints.read_text(encoding="utf-8"))
        if pins:
            assert cluster["spec"]["rayVersion"] == pins[0], "rayVersion must equal the image's Ray"


# The pull policy each shipped composition runs with: every tag is pinned and never re-pushed, so a node's copy is the
# right one (kind: the image loaded with `kind load docker-image`, which a pull would not find; gpu: a multi-GB CUDA
# image pulled once per node, not at every scale-up from zero).
PULL_POLICY = {
    "base": "IfNotPresent",
    "dev": "IfNotPresent",
    "gpu": "IfNotPresent",
    "external-db": "IfNotPresent",
}


@pytest.mark.parametrize("name", ALL)
def test_images_are_pinned_with_an_explicit_pull_policy(rendered, name):
    docs = rendered[name]
    for where, c in all_containers(docs):
        tag = image_tag(c["image"])
        if tag in (None, "latest"):
            # Kubernetes defaults the policy to Always for :latest: an image loaded into kind is pulled again
            assert c.get("imagePullPolicy"), f"{where}: {c['image']} is :latest without an imagePullPolicy"
        assert tag not in (None, "latest"), f"{where}: {c['image']} is not pinned to a tag"
        assert c.get("imagePullPolicy") in {"IfNotPresent", "Always", "Never"}, f"{where}: no imagePullPolicy"
        if c["image"].split(":")[0].endswith("varsweep"):
            assert c["imagePullPolicy"] == PULL_POLICY[name], where
    for cluster in objects(docs, "RayCluster"):
        if cluster["spec"].get("enableInTreeAutoscaling"):
            # the autoscaler sidecar KubeRay adds runs the head's image
            assert cluster["spec"]["autoscalerOptions"]["imagePullPolicy"] == PULL_POLICY[name]


def test_image_tag_is_pinned_in_one_place_per_composition():
    """Sources name the image `varsweep` without a tag; only kustomizations' `images:` pin it."""
    for path in K8S.rglob("*.yaml"):
        if CRD_DIR in path.parents or "overlays/local" in path.as_posix():
            continue
        for match in re.finditer(r"(?m)^\s*-?\s*image:\s*(\S+)", path.read_text(encoding="utf-8")):
            image = match.group(1).strip("\"'")
            if image.split(":")[0].endswith("varsweep"):
                assert image == "varsweep", f"{path.relative_to(REPO)}: {image} (pin tags in `images:`)"


@pytest.mark.parametrize("name", ALL)
def test_head_migrates_the_store_before_any_driver(rendered, name):
    docs = rendered[name]
    (cluster,) = objects(docs, "RayCluster")
    init = cluster["spec"]["headGroupSpec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["wait-for-db", "migrate"]
    wait, migrate = init
    assert wait["command"][:2] == ["python", "/app/deploy/scripts/wait_for_db.py"]
    assert (REPO / wait["command"][1].removeprefix("/app/")).is_file()
    assert wait["command"][wait["command"].index("--url-env") + 1] == DATABASE_URL
    assert migrate["command"] == ["python", "-m", "sweep.store", "upgrade"]
    for c in init:
        assert effective_env(c, docs)[DATABASE_URL].get("secret") == ("varsweep-db", DATABASE_URL)


@pytest.mark.parametrize("name", ALL)
def test_mlflow_server(rendered, name):
    docs = rendered[name]
    deploy = one(docs, "Deployment", "mlflow")
    pod = deploy["spec"]["template"]["spec"]
    (server,) = [c for c in pod["containers"] if c["name"] == "mlflow"]
    assert server["command"] == ["mlflow", "server"]
    args = dict(
        a.removeprefix("--").split("=", 1) if "=" in a else (a.removeprefix("--"), "") for a in server["args"]
    )
    assert args["host"] == "0.0.0.0" and args["port"] == "5000"
    assert args["artifacts-destination"].startswith("/")
    assert any(m["mountPath"] == args["artifacts-destination"] for m in server["volumeMounts"])
    # mlflow's own envvar for --backend-store-uri; a database of its own.
    env = effective_env(server, docs)
    assert env["MLFLOW_BACKEND_STORE_URI"].get("secret") == ("varsweep-db", "MLFLOW_BACKEND_STORE_URI")
    backend = secret_values(one(docs, "Secret", "varsweep-db"))["MLFLOW_BACKEND_STORE_URI"]
    assert urlsplit(backend).path == "/mlflow"
    # Host headers clients send must pass mlflow's check (exact match, or fnmatch when the pattern has '*').
    allowed = args["allowed-hosts"].split(",")
    for host in (
        "mlflow",
        "mlflow:5000",
        "mlflow.varsweep.svc.cluster.local:5000",
        "localhost:5000",
        "127.0.0.1:5000",
    ):
        assert any(fnmatch.fnmatch(host, p) if "*" in p else host == p for p in allowed), host
    assert "*" not in allowed
    probes = [server[p] for p in ("readinessProbe", "livenessProbe", "startupProbe")]
    assert all(p["httpGet"]["path"] == "/health" for p in probes)
    assert {p["httpGet"]["port"] for p in probes} <= {"http", 5000}
    assert deploy["spec"]["strategy"]["type"] == "Recreate", "RWO artifact volume"


def test_postgres_probes_use_pg_isready(rendered):
    pg = one(rendered["base"], "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "pg_isready" in " ".join(pg[probe]["exec"]["command"])


# ------------------------------------------------------------------------------------------ components
@pytest.mark.parametrize("base", ["overlays/dev", "overlays/gpu"])
def test_offline_component_switches_the_hub_off_and_the_worker_cache_to_read_only(
    rendered, kustomize, crd_validators, tmp_path, base
):
    overlay = compose(tmp_path, f"resources: [{{k8s}}/{base}]\ncomponents: [{{k8s}}/components/offline]\n")
    docs = kustomize(overlay)
    shipped = rendered[base.split("/")[1]]
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        (d["kind"], d["metadata"]["name"]) for d in shipped
    }
    assert one(docs, "ConfigMap", "varsweep-config")["data"]["HF_HUB_OFFLINE"] == "1"
    (cluster,) = objects(docs, "RayCluster")
    assert _crd_errors(crd_validators, cluster) == []
    for where, template in pod_templates(cluster):
        (ray,) = [c for c in containers(template, init=False) if c["name"].startswith("ray-")]
        mount = mount_for(ray, env_value(ray, docs, "HF_HOME"))
        assert bool(mount.get("readOnly")) == (not where.endswith("/head")), where
    # the same composition passes the volume and env checks the shipped overlays pass
    test_ray_pods_mount_what_the_sweep_writes_and_reads({"offline": docs}, "offline")
    test_every_env_var_is_a_setting_or_a_deliberate_library_variable({"offline": docs}, "offline")
