"""The links a grid prints, opened in a real headless browser on a real ``mlflow ui``: the runs
table shows val_loss, runtime_s and peak_memory_mb (hgbench's view, ``hgbench.store.default_view``)
without picking columns, and the compare link opens MLflow's compare page on the grid's runs.
Skipped where no Chromium is installed (``apt-get install chromium``)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import unquote
from pathlib import Path

import pytest
from helpers import run_cli

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BROWSER is None, reason="no headless browser: install chromium (apt-get install chromium)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui(mlflow_db, tmp_path):
    """``mlflow ui`` on the test's store (one worker, no job runner), its base URL."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", f"sqlite:///{mlflow_db}",
                             "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow ui did not start")
                time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def dom(url: str, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran (15 s of the browser's virtual time)."""
    out = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                          f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def cells(page: str, col: str) -> list[str]:
    """The texts of the runs table's cells in a column (MLflow's column id, e.g. metrics.`val_loss`)."""
    found = re.findall(r'role="gridcell"[^>]*col-id="%s"[^>]*>(.*?)</div>' % re.escape(col), page)
    return [t for t in (re.sub(r"<[^>]+>", "", c).strip() for c in found) if t]


def test_the_printed_links_open_on_the_numbers_and_the_comparison(ui, mlflow_db, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    code, out, err = run_cli(monkeypatch, tmp_path, "-m", "experiment=quick", "hyper_steps=2", "eval_every=1", "seed=0,1")
    assert code == 0, err
    table = re.search(r"then open (http://127\.0\.0\.1:5000/\S+)", out.split("hgbench sweep", 1)[1]).group(1)
    compare = re.search(r"compare these 2 runs: open (http://127\.0\.0\.1:5000/\S+)", out).group(1)
    runs = MlflowClient(f"sqlite:///{mlflow_db}").search_runs([re.search(r"experiments/(\d+)/", table).group(1)])
    assert len(runs) == 2

    page = dom(table.replace("http://127.0.0.1:5000", ui), tmp_path)
    assert "Error loading shared view state" not in page
    headers = re.findall(r'role="columnheader"[^>]*col-id="([^"]+)"[^>]*style="left: (\d+)px', page)
    shown = [h for h, _ in sorted(headers, key=lambda h: int(h[1])) if h.startswith("metrics.")]  # as laid out, left to right
    assert shown[:3] == ["metrics.`val_loss`", "metrics.`test_loss`", "metrics.`test_acc`"], headers
    headers = [h for h, _ in headers]
    assert {"metrics.`runtime_s`", "metrics.`peak_memory_mb`", "metrics.`load_avg_start`"} <= set(shown)
    assert "attributes.`Source`" not in headers  # MLflow's defaults gave way to the numbers
    for key in ("val_loss", "runtime_s", "peak_memory_mb"):
        got = sorted(float(c) for c in cells(page, f"metrics.`{key}`"))
        assert got == pytest.approx(sorted(r.data.metrics[key] for r in runs)), key
    assert all(r.info.run_name in page for r in runs)

    page = dom(compare.replace("http://127.0.0.1:5000", ui), tmp_path)
    assert "Comparing 2 Runs from 1 Experiment" in page
    assert all(r.info.run_id in page for r in runs)
    assert sorted(json.loads(unquote(compare.split("runs=")[1].split("&")[0]))) == sorted(r.info.run_id for r in runs)
