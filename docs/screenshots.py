"""Screenshots of what a sweep leaves behind, in headless Chromium: docs/img/*.png.

Runs the README's demo sweep (twice: ``--trials 6``, then ``--trials 10``, so that the study's run holds two
invocations) in a temporary folder, then serves what users open and photographs it:

* ``mlflow-runs.png``: the MLflow UI's runs table (the classic view), the study's run expanded to its trials;
* ``mlflow-trial.png``: the best trial's run (parameters, metrics, tags);
* ``optuna-dashboard.png``: optuna-dashboard on the study's database;
* ``leaderboard.png``: the leaderboard page.

Needs Debian's chromium and chromium-driver, and selenium (``pip install selenium``).

    python docs/screenshots.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "img"
BIN = Path(sys.executable).parent
STUDY = "tiny-llava:mmvp:paper"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1500,950",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="varsweep-shots-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VARSWEEP_", "MLFLOW_", "RAY_ADDRESS"))}
    sample = REPO / "examples" / "mmvp-sample"
    for trials in (6, 10):
        subprocess.run(
            [
                str(BIN / "varsweep"),
                "sweep",
                "--task",
                "mmvp",
                "--data-dir",
                str(sample),
                "--trials",
                str(trials),
                "--batch",
                "4",
            ],
            cwd=work,
            env=env,
            check=True,
        )

    ports = {"mlflow": free_port(), "optuna": free_port(), "board": free_port()}
    servers = [
        subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{work / 'mlruns.db'}",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "1",
            ],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                str(BIN / "optuna-dashboard"),
                f"sqlite:///{work / 'varsweep.db'}",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["optuna"]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                str(BIN / "varsweep"),
                "leaderboard",
                "--serve",
                "--port",
                str(ports["board"]),
                "--mlflow-ui",
                f"http://127.0.0.1:{ports['mlflow']}",
            ],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        mlflow = f"http://127.0.0.1:{ports['mlflow']}"
        for url in (
            f"{mlflow}/health",
            f"http://127.0.0.1:{ports['optuna']}/api/studies",
            f"http://127.0.0.1:{ports['board']}/",
        ):
            wait_for(url)
        experiment = json.load(
            urllib.request.urlopen(
                f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name={urllib.request.quote(STUDY)}"
            )
        )["experiment"]["experiment_id"]
        runs = json.load(
            urllib.request.urlopen(
                urllib.request.Request(
                    f"{mlflow}/api/2.0/mlflow/runs/search",
                    method="POST",
                    headers={"Content-Type": "application/json"},
                    data=json.dumps(
                        {"experiment_ids": [experiment], "filter": "tags.`varsweep.best` = 'true'"}
                    ).encode(),
                )
            )
        )["runs"]
        best = runs[0]["info"]["run_id"]
        driver = browser()
        try:
            from selenium.webdriver.common.by import By

            driver.get(f"{mlflow}/#/experiments/{experiment}?workflowType=machine_learning")
            time.sleep(6)
            for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
                close.click()  # the assistant's side panel
            # the study's run: its expander (the "+" beside the run name) shows its trial runs
            driver.find_element(
                By.CSS_SELECTOR,
                "[col-id='attributes.`Run Name`'] button[data-component-id*='runnamecellrenderer']",
            ).click()
            time.sleep(3)
            driver.save_screenshot(str(OUT / "mlflow-runs.png"))
            driver.get(f"{mlflow}/#/experiments/{experiment}/runs/{best}?workflowType=machine_learning")
            time.sleep(6)
            driver.save_screenshot(str(OUT / "mlflow-trial.png"))
            driver.get(f"http://127.0.0.1:{ports['optuna']}/dashboard/studies/1")
            time.sleep(6)
            driver.save_screenshot(str(OUT / "optuna-dashboard.png"))
            driver.get(f"http://127.0.0.1:{ports['board']}/")
            time.sleep(2)
            driver.save_screenshot(str(OUT / "leaderboard.png"))
        finally:
            driver.quit()
    finally:
        for server in servers:
            server.terminate()


if __name__ == "__main__":
    main()
