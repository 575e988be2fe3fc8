"""`hangar serve --no-model`: health, metrics and the registry API without a model."""
import json
import subprocess
import tempfile

from conftest import Server, hangar_bin, http, model_path


def test_no_model_server_answers_health_metrics_and_registry():
    home = tempfile.mkdtemp(prefix="hangar-no-model-")
    subprocess.run([hangar_bin(), "--home", home, "registry", "import", model_path(), "--name", "gemma"],
                   check=True, capture_output=True)
    srv = Server("--no-model", "--home", home, with_model=False)
    try:
        for path in ("/health", "/v2/health/live", "/v2/health/ready", "/metrics"):
            status, _, body = http("GET", srv.base + path)
            assert status == 200, (path, body)
        status, _, body = http("GET", srv.base + "/v1/models")
        assert status == 200 and json.loads(body)["data"] == [], body
        status, _, body = http("GET", srv.base + "/v1/registry/models")
        assert status == 200, body
        assert [m["name"] for m in json.loads(body)["models"]] == ["gemma"]
        status, _, body = http("POST", srv.base + "/v1/completions",
                               body=json.dumps({"prompt": "hi"}).encode(),
                               headers={"content-type": "application/json"})
        assert status == 404, body
        assert "--no-model" in json.loads(body)["error"]["message"]
    finally:
        assert srv.stop() == 0
