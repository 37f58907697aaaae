"""The leaderboard page: rendered from a real store, escaped, linked to MLflow, and served to headless Chromium."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dashboards.leaderboard import main, mlflow_run_url, render_leaderboard
from sweep.store import BestRecord, Store

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
MLFLOW_UI = "http://127.0.0.1:5000"

BASE = dict(
    model="tiny-llava",
    task="mmvp",
    convention="paper",
    tau=17.3456,
    rho=0.8125,
    p=0.4,
    summ=0.2,
    first_layer=2,
    metric="pair_accuracy",
    direction="maximize",
    tuning_value=0.5,
    heldout_value=0.4667,
    baseline_heldout=0.3333,
    n_tuning=10,
    n_heldout=5,
    sweep_id="sweep-1",
    study="tiny-llava:mmvp:paper",
    mlflow_run_id="a1b2c3d4e5f60718",
    git_commit="abc1234",
    data_fingerprint="f" * 16,
)
ROWS = [
    BASE | dict(ci_low=0.05, ci_high=0.21, p_value=0.004, n_resamples=2000),
    BASE
    | dict(
        task="pope",
        convention="official",
        metric="f1",
        tau=23.5,
        rho=0.3,
        p=0.55,
        heldout_value=0.801,
        baseline_heldout=0.812,
        mlflow_run_id="ffee0011",
        study="tiny-llava:pope:official",
        ci_low=-0.02,
        ci_high=-0.003,
        p_value=0.01,
        n_resamples=2000,
    ),
    BASE
    | dict(
        model="llava-hf/llava-1.5-7b-hf",
        task="chair",
        metric="chair_s",
        direction="minimize",
        tau=31.0,
        heldout_value=43.2,
        baseline_heldout=45.0,
        mlflow_run_id=None,
        study="llava:chair:paper",
        ci_low=-3.1,
        ci_high=-0.4,
        p_value=0.02,
        n_resamples=2000,
    ),
    # within noise: the interval holds 0
    BASE
    | dict(
        task="cv_bench",
        metric="accuracy",
        heldout_value=0.58,
        baseline_heldout=0.56,
        ci_low=-0.01,
        ci_high=0.05,
        p_value=0.2,
        n_resamples=2000,
        study="tiny-llava:cv_bench:paper",
    ),
    # stored by the previous release: no interval
    BASE
    | dict(
        task="gqa", metric="accuracy", heldout_value=0.64, baseline_heldout=0.62, study="tiny-llava:gqa:paper"
    ),
]


@pytest.fixture()
def store_url(tmp_path) -> str:
    """A real SQLite store with the rows above."""
    url = f"sqlite:///{tmp_path / 'varsweep.db'}"
    store = Store(url, retry_seconds=0)
    for row in ROWS:
        assert store.upsert_best(BestRecord(**row))
    store.close()
    return url


def _row_html(page: str, model: str, task: str) -> str:
    match = re.search(rf'<tr data-model="{re.escape(model)}" data-task="{task}">.*?</tr>', page, re.S)
    assert match, f"no row for {model} / {task}"
    return match.group(0)


def test_page_from_the_store_shows_every_row(store_url):
    rows = Store(store_url).best()
    page = render_leaderboard(rows, mlflow_ui=MLFLOW_UI, source=store_url)
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert "5 best settings across 2 models" in page
    assert page.count('<tbody class="model">') == 2  # one row group per model

    mmvp = _row_html(page, "tiny-llava", "mmvp")
    for text in ("17.35", "0.812", "0.400", "0.200", "pair_accuracy &uarr;", "0.4667", "0.3333", "10 / 5"):
        assert text in mmvp
    assert 'class="num better"' in mmvp and "+0.1334 [+0.0500, +0.2100]" in mmvp and ">0.004<" in mmvp
    assert ">+0.0333<" in mmvp  # the tuning - held-out gap
    assert f'href="{MLFLOW_UI}/#/runs/a1b2c3d4e5f60718"' in mmvp

    pope = _row_html(page, "tiny-llava", "pope")
    assert "official" in pope and "23.50" in pope
    assert 'class="num worse"' in pope and "-0.0110" in pope  # lower F1 than VAR off, beyond noise
    assert 'class="num same"' in _row_html(page, "tiny-llava", "cv_bench")  # a gain within noise stays grey
    older = _row_html(page, "tiny-llava", "gqa")
    assert 'class="num same" title="no interval: stored by an older release">+0.0200<' in older

    chair = _row_html(page, "llava-hf/llava-1.5-7b-hf", "chair")
    assert (
        "chair_s &darr;" in chair and 'class="num better"' in chair and ">-1.80 [-3.10, -0.40]<" in chair
    )  # lower is better
    assert "href" not in chair  # no MLflow run recorded


def test_page_without_mlflow_ui_has_no_links(store_url):
    page = render_leaderboard(Store(store_url).best(), mlflow_ui=None)
    assert "<a " not in page


def test_empty_store_is_a_friendly_page(tmp_path):
    page = render_leaderboard(Store(f"sqlite:///{tmp_path / 'empty.db'}").best(), mlflow_ui=None)
    assert "No sweeps yet." in page and "<table" not in page


def test_everything_is_escaped():
    evil = BestRecord(
        **(
            BASE
            | dict(
                model='<script>alert("m")</script>',
                task="t&<b>",
                metric="m<i>",
                direction="sideways",
                mlflow_run_id='r"><script>x</script>',
            )
        )
    )
    page = render_leaderboard([evil], mlflow_ui=MLFLOW_UI, source="postgresql://u:s3cret@db:5432/v")
    assert "<script" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(&quot;m&quot;)&lt;/script&gt;" in page
    assert "/#/runs/r%22%3E%3Cscript%3Ex%3C%2Fscript%3E" in page
    assert "s3cret" not in page and "postgresql://u:***@db:5432/v" in page
    assert 'class="num same"' in page  # unknown direction: not coloured


def test_mlflow_ui_must_be_http():
    assert mlflow_run_url("http://mlflow:5000/", "abc") == "http://mlflow:5000/#/runs/abc"
    with pytest.raises(ValueError, match="mlflow_ui must be an http"):
        render_leaderboard([], mlflow_ui="javascript:alert(1)")


def test_cli_writes_the_page(store_url, tmp_path, capsys):
    out = tmp_path / "board.html"
    assert main(["--database-url", store_url, "--mlflow-ui", MLFLOW_UI, "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "llava-hf/llava-1.5-7b-hf" in page and f"{MLFLOW_UI}/#/runs/ffee0011" in page
    assert "5 best settings" in capsys.readouterr().err


def test_cli_reads_the_environment_and_never_creates_a_missing_sqlite_file(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nothing-here.db"
    monkeypatch.setenv("VARSWEEP_DATABASE_URL", f"sqlite:///{missing}")
    out = tmp_path / "board.html"
    assert main(["--out", str(out)]) == 0
    assert "No sweeps yet." in out.read_text(encoding="utf-8")
    assert not missing.exists()


def test_cli_never_prints_the_database_password(tmp_path, capsys):
    url = "postgresql://varsweep:hunter2-secret@127.0.0.1:9/varsweep"  # port 9: nothing listens
    code = main(["--database-url", url, "--retry-seconds", "0", "--out", str(tmp_path / "x.html")])
    captured = capsys.readouterr()
    assert code == 1
    assert "hunter2-secret" not in captured.out + captured.err
    assert captured.err.startswith("error: ") and "***" in captured.err


def test_cli_rejects_a_url_that_is_no_database(tmp_path, capsys):
    code = main(["--database-url", "nosuchdb://me:pw-123@host/x", "--out", str(tmp_path / "x.html")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: cannot use the database URL nosuchdb://me:***@host/x")
    assert "pw-123" not in err


def test_cli_rejects_a_bad_mlflow_ui(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--mlflow-ui", "ftp://x", "--out", os.devnull])
    assert exit_info.value.code == 2
    assert "mlflow_ui must be an http(s) URL" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- headless Chromium


def _start_server(store_url: str, log: Path) -> tuple[subprocess.Popen, str]:
    """``--serve --port 0`` as a subprocess; returns it and the URL it prints once listening."""
    with log.open("wb") as stderr:  # the request log; a pipe nobody reads could fill up
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dashboards.leaderboard",
                "--database-url",
                store_url,
                "--mlflow-ui",
                MLFLOW_UI,
                "--serve",
                "--port",
                "0",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline().decode()
            match = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if match:
                return process, match.group(0)
        if process.poll() is not None:
            break
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError(f"the leaderboard server did not start: {log.read_text(errors='replace')[-2000:]}")


def _wait_until_it_answers(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


@pytest.mark.e2e
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
def test_served_page_in_headless_chromium(store_url, tmp_path):
    log = tmp_path / "server.log"
    process, url = _start_server(store_url, log)
    try:
        _wait_until_it_answers(url)
        dumped = _chromium(tmp_path, "--dump-dom", url)
        assert dumped.returncode == 0, dumped.stderr[-2000:]
        dom = dumped.stdout
        assert "<h1>varsweep leaderboard</h1>" in dom
        for model, task, tau in (
            ("tiny-llava", "mmvp", "17.35"),
            ("tiny-llava", "pope", "23.50"),
            ("llava-hf/llava-1.5-7b-hf", "chair", "31.00"),
        ):
            row = _row_html(dom, model, task)
            assert f">{task}</td>" in row and f'<td class="num">{tau}</td>' in row
        assert f'href="{MLFLOW_UI}/#/runs/a1b2c3d4e5f60718"' in dom
        assert f'href="{MLFLOW_UI}/#/runs/ffee0011"' in dom

        shot = tmp_path / "page.png"
        taken = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,800", url)
        assert taken.returncode == 0, taken.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
    assert '"GET / HTTP/1.1" 200' in log.read_text()  # Chromium's requests reached our server
