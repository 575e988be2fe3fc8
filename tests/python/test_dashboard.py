"""The /ui dashboard in a real browser: Debian's headless chromium driven by npm's
playwright-core (tests/browser/dashboard.mjs) against a live server with a model, a
registry holding a small model, a request log and an admin token. Screenshots go to
target/ui-screenshots/."""
import json
import os
import shutil
import subprocess
import tempfile
import time

from conftest import MODEL_NAME, ROOT, Server, hangar_bin, http, unavailable
from test_no_model import write_tiny_gguf


def browser_ready():
    node = shutil.which("node")
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not node or not chromium:
        unavailable("BROWSER", "node and Debian's chromium are needed (apt-get install chromium nodejs)")
    if not (ROOT / "tests/browser/node_modules/playwright-core").is_dir():
        unavailable("BROWSER", "run `npm ci --prefix tests/browser` to install playwright-core")
    return node, chromium


def test_dashboard_pages_charts_search_and_promotion_rights():
    node, chromium = browser_ready()
    home = tempfile.mkdtemp(prefix="hangar-ui-")
    tiny = os.path.join(home, "tiny.gguf")
    write_tiny_gguf(tiny)
    run = lambda *a: subprocess.run([hangar_bin(), "--home", home, *a], check=True,
                                    capture_output=True, text=True).stdout
    run("registry", "import", tiny, "--name", "tiny")
    admin = json.loads(run("registry", "token", "create", "--name", "ui-admin", "--role", "admin",
                           "--json"))["token"]
    srv = Server("--home", home, "--api-key", "reader-key", "--sample-interval", "0.5")
    try:
        auth = {"authorization": "Bearer reader-key"}
        for p in ["Describe a lighthouse at night.", "Name three rivers.", "What is 2+2?"]:
            status, _ = srv.post_json("/v1/completions", {"model": MODEL_NAME, "prompt": p,
                                                          "max_tokens": 4}, headers=auth)
            assert status == 200
        # A tracking run with a metric history, logged as the admin (readers cannot log).
        admin_h = {"authorization": f"Bearer {admin}"}
        status, run = srv.post_json("/api/2.0/mlflow/runs/create",
                                    {"experiment_id": "0", "run_name": "ui-run"}, headers=admin_h)
        assert status == 200, run
        run_id = run["run"]["info"]["run_id"]
        for step, v in enumerate([0.9, 0.7, 0.55, 0.5]):
            status, body = srv.post_json("/api/2.0/mlflow/runs/log-metric",
                                         {"run_id": run_id, "key": "loss", "value": v,
                                          "timestamp": 1_700_000_000_000 + step, "step": step},
                                         headers=admin_h)
            assert status == 200, body
        time.sleep(1.5)  # a few history samples after the traffic
        shots = ROOT / "target" / "ui-screenshots"
        out = subprocess.run([node, str(ROOT / "tests/browser/dashboard.mjs"), srv.base, admin,
                              "reader-key", str(shots)], capture_output=True, text=True,
                             timeout=180, env={**os.environ, "CHROMIUM": chromium})
        assert out.returncode == 0, out.stdout + out.stderr
        assert (shots / "overview.png").stat().st_size > 10_000
    finally:
        srv.stop()
