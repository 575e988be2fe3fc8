"""tritonclient[http] against the KServe V2 endpoints of `hangar serve`."""

import numpy as np
import pytest
import tritonclient.http as triton

from conftest import MODEL_NAME, hangar_generate

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=300.0)


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME)
    meta = client.get_model_metadata(MODEL_NAME)
    assert meta["outputs"][0]["name"] == "text_output"
    assert meta["device"] == "cpu"
    assert "generate" in client.get_server_metadata()["extensions"]


def _inputs(prompt, binary):
    text = triton.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_), binary_data=binary)
    max_tokens = triton.InferInput("max_tokens", [1], "INT32")
    max_tokens.set_data_from_numpy(np.array([8], dtype=np.int32), binary_data=binary)
    temperature = triton.InferInput("temperature", [1], "FP32")
    temperature.set_data_from_numpy(np.array([0.0], dtype=np.float32), binary_data=binary)
    return [text, max_tokens, temperature]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_returns_text(client, binary):
    want = hangar_generate(PROMPT, 8)
    outputs = None if binary else [triton.InferRequestedOutput("text_output", binary_data=False)]
    result = client.infer(MODEL_NAME, _inputs(PROMPT, binary), outputs=outputs)
    out = result.as_numpy("text_output")
    assert out.shape == (1,)
    got = out[0].decode() if isinstance(out[0], bytes) else str(out[0])
    assert got == want
    # Usage in the response parameters, as the gRPC side reports it.
    params = result.get_response()["parameters"]
    assert params["finish_reason"] in ("stop", "length")
    assert params["prompt_tokens"] > 0
    assert 0 < params["completion_tokens"] <= 8


def test_unknown_model_is_an_error(client):
    with pytest.raises(triton.InferenceServerException):
        client.infer("no-such-model", _inputs(PROMPT, True))
