"""KServe's own Python client (`kserve.InferenceGRPCClient`) against the KServe V2 gRPC
API of `hangar serve --grpc-port` (the client runs in kserve_grpc_calls.py, a separate
process: its protobuf module clashes with tritonclient's in one interpreter)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import MODEL_NAME, Server, hangar_generate

PROMPT = "The capital of France is"


def test_kserve_client_infers_text_and_sees_errors():
    want = hangar_generate(PROMPT, 8)
    s = Server("--grpc-port", "0", "--api-key", "secret")
    try:
        url = f"127.0.0.1:{s.grpc_port()}"
        script = Path(__file__).with_name("kserve_grpc_calls.py")
        run = subprocess.run([sys.executable, str(script), url, MODEL_NAME, PROMPT, "secret"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        got = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        assert s.stop() == 0
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["output"] == {"name": "text_output", "datatype": "BYTES", "text": want}
    assert got["finish_reason"] in ("stop", "length")
    assert 0 < got["completion_tokens"] <= 8
    assert got["unknown_model"]["code"] == "NOT_FOUND"
    assert MODEL_NAME in got["unknown_model"]["details"]
    assert got["no_key"]["code"] == "UNAUTHENTICATED"
