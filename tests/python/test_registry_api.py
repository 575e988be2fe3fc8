"""The model registry's HTTP API is mounted in `hangar serve`, with its own auth."""
import json
import subprocess
import tempfile

from conftest import Server, hangar_bin, http, model_path


def test_registry_api_lists_models_and_refuses_anonymous_changes():
    home = tempfile.mkdtemp(prefix="hangar-reg-api-")
    subprocess.run([hangar_bin(), "--home", home, "registry", "import", model_path(), "--name", "gemma"],
                   check=True, capture_output=True)
    srv = Server(env={"HANGAR_HOME": home})
    try:
        status, _, body = http("GET", srv.base + "/v1/registry/models")
        assert status == 200, body
        assert [m["name"] for m in json.loads(body)["models"]] == ["gemma"]
        # Network callers may read, but a change needs a registry token.
        status, _, body = http("POST", srv.base + "/v1/registry/models/gemma/versions/1/promote",
                            body=json.dumps({"stage": "production"}).encode(),
                            headers={"content-type": "application/json"})
        assert status in (401, 403), (status, body)
        status, _, body = http("GET", srv.base + "/v1/registry/models/gemma")
        assert status == 200 and b"production" not in body, body
    finally:
        srv.stop()
