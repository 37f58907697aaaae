"""The helpers behind the manifests: wait_for_db.py (init containers) and new-local-overlay.sh (real credentials
in a git-ignored overlay), plus the README's other secret route and component composition, rendered offline."""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SCRIPT = DEPLOY / "scripts" / "new-local-overlay.sh"


# ------------------------------------------------------------------------------------------ wait_for_db
@pytest.fixture(scope="module")
def wait_for_db():
    spec = importlib.util.spec_from_file_location("wait_for_db", DEPLOY / "scripts" / "wait_for_db.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wait_for_db_returns_once_the_database_answers(wait_for_db, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SOME_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    assert wait_for_db(["--url-env", "SOME_DB_URL", "--timeout", "5"]) == 0
    assert "is up" in capsys.readouterr().err


def test_wait_for_db_gives_up_without_printing_the_password(wait_for_db, monkeypatch, capsys):
    password = "Sup3rSecretPw0rd"
    monkeypatch.setenv(
        "VARSWEEP_DATABASE_URL",
        f"postgresql+psycopg://varsweep:{password}@127.0.0.1:{_closed_port()}/varsweep",
    )
    assert wait_for_db(["--timeout", "0.6", "--interval", "0.2"]) == 1
    captured = capsys.readouterr()
    assert "not reachable" in captured.err
    assert password not in captured.err + captured.out


@pytest.mark.parametrize("value", [None, "not a url"])
def test_wait_for_db_rejects_a_missing_or_bad_variable(wait_for_db, monkeypatch, capsys, value):
    if value is None:
        monkeypatch.delenv("VARSWEEP_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("VARSWEEP_DATABASE_URL", value)
    assert wait_for_db(["--timeout", "1"]) == 2
    assert "VARSWEEP_DATABASE_URL" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ local overlays
@pytest.fixture()
def deploy_copy(tmp_path) -> Path:
    """A copy of deploy/ (without the large CRD copies) where the script may write its local overlay."""
    target = tmp_path / "deploy"
    shutil.copytree(DEPLOY, target, ignore=shutil.ignore_patterns("crds", "local", "__pycache__"))
    return target


def _run_script(deploy_copy: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = deploy_copy / "scripts" / SCRIPT.name
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VARSWEEP_DATABASE_URL", "MLFLOW_BACKEND_STORE_URI", "VARSWEEP_OPTUNA_URL"}
    }
    return subprocess.run(
        ["sh", str(script), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=clean | (env or {}),
    )


def _secret(docs: list[dict]) -> dict[str, str]:
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "varsweep-db"]
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return values | (secret.get("stringData") or {})


def test_script_is_executable():
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_local_overlay_replaces_the_placeholder_with_a_random_password(deploy_copy, kustomize, overlay):
    proc = _run_script(deploy_copy, overlay)
    assert proc.returncode == 0, proc.stderr
    local = deploy_copy / "k8s" / "overlays" / "local"
    env_file = (local / "secrets.env").read_text()
    assert (local / "secrets.env").stat().st_mode & 0o077 == 0, "secrets.env must be private to its owner"
    password = re.search(r"^POSTGRES_PASSWORD=([0-9a-f]{48})$", env_file, re.M).group(1)
    assert password not in proc.stdout + proc.stderr, "the script must not print the password"

    docs = kustomize(local)
    values = _secret(docs)
    assert "CHANGE_ME" not in "".join(values.values())
    assert set(values) == {
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "VARSWEEP_DATABASE_URL",
        "MLFLOW_BACKEND_STORE_URI",
    }
    for key in ("VARSWEEP_DATABASE_URL", "MLFLOW_BACKEND_STORE_URI"):
        url = urlsplit(values[key])
        assert url.password == values["POSTGRES_PASSWORD"] == password and url.hostname == "postgres"
    # Same object set as the shipped overlay: only the Secret's contents changed.
    shipped = kustomize(REPO / "deploy" / "k8s" / "overlays" / overlay)
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        (d["kind"], d["metadata"]["name"]) for d in shipped
    }

    again = _run_script(deploy_copy, overlay)
    assert again.returncode == 1 and "not overwriting" in again.stderr
    assert (local / "secrets.env").read_text() == env_file


def test_local_overlay_for_an_external_database(deploy_copy, kustomize):
    urls = {
        "VARSWEEP_DATABASE_URL": "postgresql+psycopg://sweeper:s3cr3t-external@db.corp:5432/varsweep",
        "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg://tracker:s3cr3t-external@db.corp:5432/mlflow",
        "VARSWEEP_OPTUNA_URL": "postgresql+psycopg://sweeper:s3cr3t-external@db.corp:5432/optuna",
    }
    missing = _run_script(deploy_copy, "external-db")
    assert missing.returncode != 0 and "VARSWEEP_DATABASE_URL" in missing.stderr
    proc = _run_script(deploy_copy, "external-db", env=urls)
    assert proc.returncode == 0, proc.stderr
    docs = kustomize(deploy_copy / "k8s" / "overlays" / "local")
    assert _secret(docs) == urls
    assert not [d for d in docs if d["kind"] == "StatefulSet"]


@pytest.mark.parametrize("bad", ["", "local", "../etc", "nope"])
def test_script_refuses_unknown_overlays(deploy_copy, bad):
    proc = _run_script(deploy_copy, *([bad] if bad else []))
    assert proc.returncode == 2
    assert not (deploy_copy / "k8s" / "overlays" / "local" / "secrets.env").exists()


def _write_overlay(tmp_path: Path, body: str) -> Path:
    """A throwaway kustomization in tmp_path; {k8s} is replaced by the relative path to deploy/k8s."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    k8s = os.path.relpath(REPO / "deploy" / "k8s", overlay)
    (overlay / "kustomization.yaml").write_text(body.replace("{k8s}", k8s))
    return overlay


def test_secret_managed_outside_kustomize_is_never_overwritten(tmp_path, kustomize):
    """README route 2 (`kubectl create secret` / a secret manager): a local overlay deletes the placeholder, so
    `kubectl apply -k` never touches the real Secret."""
    overlay = _write_overlay(
        tmp_path,
        """\
resources:
  - {k8s}/overlays/gpu
patches:
  - patch: |-
      $patch: delete
      apiVersion: v1
      kind: Secret
      metadata:
        name: varsweep-db
""",
    )
    docs = kustomize(overlay)
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert [d for d in docs if d["kind"] == "RayCluster"]


def test_components_compose_gpu_with_an_external_database(tmp_path, kustomize):
    overlay = _write_overlay(
        tmp_path,
        """\
resources:
  - {k8s}/base
components:
  - {k8s}/components/gpu
  - {k8s}/components/external-db
""",
    )
    docs = kustomize(overlay)
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    limits = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ]
    assert limits["nvidia.com/gpu"] == 1
    assert urlsplit(_secret(docs)["VARSWEEP_DATABASE_URL"]).hostname != "postgres"
