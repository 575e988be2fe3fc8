"""The Prometheus side of monitoring, checked by Prometheus' own promtool: the alerting
rules in deploy/monitoring parse and type-check, and a live server's /metrics (after
traffic, so every family has samples) passes `promtool check metrics`."""
import json
import shutil
import subprocess
import tempfile

from conftest import MODEL_NAME, ROOT, Server, http, unavailable


def promtool():
    p = shutil.which("promtool")
    if not p:
        unavailable("PROMTOOL", "promtool is not installed (Debian: apt-get install prometheus)")
    return p


def test_alerting_rules_pass_promtool():
    out = subprocess.run([promtool(), "check", "rules",
                          str(ROOT / "deploy/monitoring/hangar-alerts.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_grafana_dashboard_queries_only_metrics_the_server_exports():
    dash = json.loads((ROOT / "deploy/monitoring/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    home = tempfile.mkdtemp(prefix="hangar-promtool-")
    srv = Server("--home", home)
    try:
        srv.post_json("/v1/completions", {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2})
        _, _, body = http("GET", srv.base + "/metrics")
        text = body.decode()
    finally:
        srv.stop()
    out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    names = {l.split()[2] for l in text.splitlines() if l.startswith("# TYPE ")}
    import re
    for e in exprs:
        for m in re.findall(r"\b(hangar_[a-z_]+?)(?:_bucket)?\b[{\[]", e):
            assert m in names, f"dashboard uses {m}, which /metrics does not export"
