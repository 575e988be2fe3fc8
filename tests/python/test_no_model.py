"""`hangar serve --no-model`: health, metrics and the registry API without a model
(and without the default model file: the registry holds a tiny GGUF written here)."""
import json
import os
import struct
import subprocess
import tempfile

from conftest import Server, hangar_bin, http


def _gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_tiny_gguf(path: str) -> None:
    """A GGUF v3 file with one 32-element F32 tensor and `general.architecture`."""
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    head += _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("test")
    head += _gguf_string("w") + struct.pack("<IQIQ", 1, 32, 0, 0)
    head += b"\0" * (-len(head) % 32)
    with open(path, "wb") as f:
        f.write(head + struct.pack("<32f", *range(32)))


def test_no_model_server_answers_health_metrics_and_registry():
    home = tempfile.mkdtemp(prefix="hangar-no-model-")
    tiny = os.path.join(home, "tiny.gguf")
    write_tiny_gguf(tiny)
    subprocess.run([hangar_bin(), "--home", home, "registry", "import", tiny, "--name", "gemma"],
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
