"""The helpers behind the manifests: wait_for_db.py (init containers) and new-local-overlay.sh (real credentials
in a git-ignored overlay), plus the README's other secret route and component composition, rendered offline, and
the README's tested command blocks (quick start, GPU) walked through against what they apply."""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SCRIPT = DEPLOY / "scripts" / "new-local-overlay.sh"
README = DEPLOY / "README.md"


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


# --------------------------------------------------------------------------------- the README's commands
def _commands(block: str) -> list[list[str]]:
    """The shell commands of a fenced block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [line.strip() for line in joined.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line and not line.startswith("#")]


def readme_blocks() -> dict[str, list[list[str]]]:
    """name -> commands of each ```bash block right after a `<!-- tested: NAME -->` line of deploy/README.md."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"<!-- tested: ([a-z0-9-]+) -->\n```bash\n(.*?)\n```", text, re.S)
    return {name: _commands(block) for name, block in found}


def all_bash_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"(?m)^[ ]*```bash\n(.*?)\n[ ]*```", text, re.S)
    return [cmd for block in blocks for cmd in _commands(block)]


def _option(argv: list[str], *names: str) -> str | None:
    """The value of the first of `names` in argv (`-x v`, `--x v` or `--x=v`)."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _selected(selector: str, labels: dict) -> bool:
    """A label selector of `key=value` / `key!=value` terms, as kubectl applies it to the objects of a file."""
    for term in selector.split(","):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        else:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
    return True


class Walk:
    """One tested block, walked through in order: what each `kubectl apply -k` renders (a local overlay written by
    new-local-overlay.sh into a copy of deploy/), what is built, loaded, pushed and copied."""

    def __init__(self, commands: list[list[str]], kustomize, deploy_copy: Path):
        self.commands = commands
        self.applies: list[tuple[int, list[dict], str | None]] = []  # (index, objects applied, selector)
        self.rendered: list[list[dict]] = []  # what each applied directory renders, unfiltered
        self.images: list[tuple[int, str, str]] = []  # (index, how, image)
        self.copies: list[tuple[int, list[str]]] = []
        self.others: list[tuple[int, list[str]]] = []
        for i, argv in enumerate(commands):
            if argv[0].endswith("new-local-overlay.sh"):
                assert (REPO / argv[0]).is_file(), argv[0]
                proc = _run_script(deploy_copy, *argv[1:])
                assert proc.returncode == 0, proc.stderr
            elif argv[:2] == ["docker", "build"]:
                assert (REPO / _option(argv, "-f")).is_file()
                self.images.append((i, "build", _option(argv, "-t")))
            elif argv[:3] == ["kind", "load", "docker-image"]:
                self.images.append((i, "kind load", argv[3]))
            elif argv[:2] == ["docker", "push"]:
                self.images.append((i, "push", argv[2]))
            elif argv[0] == "kubectl" and "apply" in argv:
                path = _option(argv, "-k")
                assert path, f"kubectl apply without -k: {argv}"
                root = deploy_copy.parent if path.startswith("deploy/k8s/overlays/local") else REPO
                docs = kustomize(root / path)
                self.rendered.append(docs)
                selector = _option(argv, "-l", "--selector")
                if selector:
                    docs = [d for d in docs if _selected(selector, d["metadata"].get("labels") or {})]
                self.applies.append((i, docs, selector))
            elif argv[0] == "kubectl" and "cp" in argv:
                self.copies.append((i, argv))
            else:
                self.others.append((i, argv))
        assert self.applies, "the block applies nothing"

    @property
    def everything(self) -> list[dict]:
        """All objects of the overlay the block applies last (whether the block applies them all or a part)."""
        return self.rendered[-1]

    def one(self, kind: str, name: str) -> dict:
        found = [d for d in self.everything if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"the applied overlay has no {kind}/{name}"
        return found[0]

    def varsweep_images(self) -> set[str]:
        (cluster,) = [d for d in self.everything if d["kind"] == "RayCluster"]
        spec = cluster["spec"]
        return {
            c["image"]
            for t in [spec["headGroupSpec"]["template"], *[g["template"] for g in spec["workerGroupSpecs"]]]
            for c in t["spec"]["containers"]
        }


@pytest.fixture()
def walks(kustomize, tmp_path) -> dict[str, Walk]:
    out = {}
    for name, commands in readme_blocks().items():
        copy = tmp_path / name / "deploy"
        shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("crds", "local", "__pycache__"))
        out[name] = Walk(commands, kustomize, copy)
    return out


def test_readme_has_the_readme_blocks():
    assert {"quickstart", "gpu"} <= set(readme_blocks())


@pytest.mark.parametrize("block", ["quickstart", "gpu"])
def test_readme_block_applies_overlays_that_render_and_holds_back_the_sweep_until_the_data(walks, block):
    walk = walks[block]
    for i, docs, selector in walk.applies:
        assert docs, f"command {i}: applies nothing"
        namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
        assert namespaces == {"varsweep"}, "the block's commands use -n varsweep"
        if selector:
            # the first apply leaves out exactly the sweep: everything else is up before the data is copied
            kinds = {d["kind"] for d in docs}
            assert "RayJob" not in kinds and {"RayCluster", "Deployment", "ConfigMap"} <= kinds, selector
    full = [i for i, _, selector in walk.applies if not selector]
    for i, _ in walk.copies:
        assert not full or i < full[0], "the data is copied before the RayJob is applied"
    for _, argv in walk.others:
        if argv[0] != "kubectl":
            continue
        assert _option(argv, "-n", "--namespace") == "varsweep", argv
        for arg in argv:
            # objects named by kind/name exist in what the block applies (the submitter Job is named after the
            # RayJob by KubeRay)
            kind = {"raycluster": "RayCluster", "rayjob": "RayJob", "job": "RayJob"}.get(arg.split("/")[0])
            if kind and "/" in arg:
                walk.one(kind, arg.split("/", 1)[1])


@pytest.mark.parametrize("block", ["quickstart", "gpu"])
def test_readme_block_builds_the_image_the_overlay_runs(walks, block):
    walk = walks[block]
    images = walk.varsweep_images()
    assert len(images) == 1
    (running,) = images
    named = [(how, image) for _, how, image in walk.images]
    assert [how for how, _ in named][:1] == ["build"], "the block builds the image first"
    for how, image in named:
        assert image == running, f"{how} {image}, but the overlay runs {running}"
    build = walk.commands[walk.images[0][0]]
    variant = next((a.split("=", 1)[1] for a in build if a.startswith("VARIANT=")), "cpu")
    assert variant == ("cuda" if running.endswith("-cuda") else "cpu"), (variant, running)
    assert any(a.startswith("GIT_COMMIT=") for a in build), "the image records the commit it was built from"
    if block == "quickstart":
        assert [how for how, _ in named] == ["build", "kind load"], "kind: build and load, no registry"
        create = next(argv for _, argv in walk.others if argv[:3] == ["kind", "create", "cluster"])
        load = walk.commands[walk.images[1][0]]
        assert _option(load, "--name") == _option(create, "--name"), "loaded into the cluster it created"
    else:
        assert "push" in [how for how, _ in named] and "/" in running.split(":")[0], (
            "GPU nodes pull from a registry"
        )


def test_readme_quickstart_copies_data_that_exists_to_the_sweeps_data_dir(walks):
    from sweep.cli import build_parser

    walk = walks["quickstart"]
    assert walk.copies, "the quick start copies its data"
    entrypoint = shlex.split(walk.one("RayJob", "varsweep-mmvp")["spec"]["entrypoint"])
    data_dir = build_parser().parse_args(entrypoint[2:]).data_dir
    (cluster,) = [d for d in walk.everything if d["kind"] == "RayCluster"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for _, argv in walk.copies:
        args = [a for a in argv[argv.index("cp") + 1 :] if not a.startswith("-")]
        args = [a for a in args if a != _option(argv, "-c")]
        source, target = args
        assert not Path(source).is_absolute() and (REPO / source).is_dir(), (
            f"kubectl cp {source}: not in the repo"
        )
        assert (REPO / source / "Questions.csv").is_file() and (REPO / source / "MMVP Images").is_dir()
        assert ":" in target and target.split(":", 1)[1] == data_dir, (
            f"copied to {target}, the sweep reads {data_dir}"
        )
        assert _option(argv, "-c") == head["name"], "copied through the head's Ray container"
        assert any(m["mountPath"] == "/data" and not m.get("readOnly") for m in head["volumeMounts"])


def test_readme_helm_installs_the_kuberay_version_of_the_crds():
    crds = (DEPLOY / "k8s" / "crds" / "README.md").read_text(encoding="utf-8")
    installs = [argv for argv in all_bash_commands() if argv[:2] == ["helm", "install"]]
    assert installs
    for argv in installs:
        version = _option(argv, "--version")
        assert f"v{version} release" in " ".join(crds.split()), (
            "the operator version the CRD copies come from"
        )


def test_readme_sweep_commands_parse_with_the_real_parser():
    from sweep.cli import build_best_parser, build_parser

    found = 0
    for argv in all_bash_commands():
        for i in range(len(argv) - 1):
            if argv[i : i + 2] != ["python", "sweep/main.py"]:
                continue
            rest = argv[i + 2 :]
            parser = build_best_parser() if rest[:1] == ["best"] else build_parser()
            options = {s for action in parser._actions for s in action.option_strings}
            rest = rest[1:] if rest[:1] == ["best"] else rest
            spelled = {a.split("=", 1)[0] for a in rest if a.startswith("--")}
            assert spelled <= options, f"{' '.join(argv)}: {spelled - options}"
            parser.parse_args(rest)
            found += 1
    assert found >= 3


def test_readme_hf_token_secret_is_the_one_the_pods_read(kustomize):
    docs = kustomize(REPO / "deploy" / "k8s" / "overlays" / "gpu")
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    spec = cluster["spec"]
    refs = set()
    for t in [spec["headGroupSpec"]["template"], *[g["template"] for g in spec["workerGroupSpecs"]]]:
        env = {e["name"]: e for e in t["spec"]["containers"][0].get("env", [])}
        ref = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["optional"] is True, "public checkpoints load without the Secret"
        refs.add((ref["name"], ref["key"]))
    creates = [
        argv
        for argv in all_bash_commands()
        if argv[:1] == ["kubectl"] and "secret" in argv and "varsweep-hf" in argv
    ]
    readme = README.read_text(encoding="utf-8")
    creates += [
        shlex.split(c) for c in re.findall(r"`(kubectl [^`]*create secret generic varsweep-hf[^`]*)`", readme)
    ]
    assert creates, "the README says how to create the token Secret"
    for argv in creates:
        keys = {a.split("=", 2)[1] for a in argv if a.startswith(("--from-file=", "--from-literal="))}
        assert {("varsweep-hf", k) for k in keys} == refs
