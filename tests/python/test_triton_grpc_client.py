"""tritonclient[grpc] against the KServe V2 gRPC API of `hangar serve --grpc-port`."""

import queue

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from conftest import MODEL_NAME, Server, hangar_generate

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def grpc_server():
    s = Server("--grpc-port", "0")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(grpc_server):
    return triton.InferenceServerClient(url=f"127.0.0.1:{grpc_server.grpc_port()}")


def _inputs(prompt, max_tokens=8, text_datatype="BYTES"):
    if text_datatype == "BYTES":
        text = triton.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    else:
        text = triton.InferInput("text_input", [1], text_datatype)
        text.set_data_from_numpy(np.array([1], dtype=np.int32))
    n = triton.InferInput("max_tokens", [1], "INT32")
    n.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    temperature = triton.InferInput("temperature", [1], "FP32")
    temperature.set_data_from_numpy(np.array([0.0], dtype=np.float32))
    return [text, n, temperature]


def _text(out):
    return "".join(x.decode() if isinstance(x, bytes) else str(x) for x in out.reshape(-1))


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME)
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "hangar"
    assert "generate" in server["extensions"]
    meta = client.get_model_metadata(MODEL_NAME, as_json=True)
    assert meta["name"] == MODEL_NAME
    assert meta["versions"] == ["1"]
    assert [o["name"] for o in meta["outputs"]] == ["text_output"]
    text_input = next(i for i in meta["inputs"] if i["name"] == "text_input")
    assert text_input["datatype"] == "BYTES"


def test_infer_returns_the_greedy_text_and_usage(client):
    want = hangar_generate(PROMPT, 8)
    result = client.infer(MODEL_NAME, _inputs(PROMPT), request_id="req-1")
    out = result.as_numpy("text_output")
    assert out.shape == (1,)
    assert _text(out) == want
    resp = result.get_response(as_json=True)
    assert resp["id"] == "req-1"
    params = resp["parameters"]
    assert params["finish_reason"]["string_param"] in ("stop", "length")
    assert int(params["prompt_tokens"]["int64_param"]) > 0
    assert 0 < int(params["completion_tokens"]["int64_param"]) <= 8


def test_request_parameters_set_sampling_options(client):
    text = triton.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([PROMPT.encode()], dtype=np.object_))
    result = client.infer(MODEL_NAME, [text], parameters={"max_tokens": 3, "temperature": 0})
    params = result.get_response(as_json=True)["parameters"]
    assert int(params["completion_tokens"]["int64_param"]) == 3
    assert params["finish_reason"]["string_param"] == "length"


def test_streaming_infer_returns_the_same_text_in_pieces(client):
    want = hangar_generate(PROMPT, 8)
    responses = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(MODEL_NAME, _inputs(PROMPT), request_id="s-1",
                                  enable_empty_final_response=True)
        pieces, final_params = [], None
        while True:
            result, error = responses.get(timeout=120)
            assert error is None, error
            resp = result.get_response(as_json=True)
            assert resp["id"] == "s-1"
            params = resp.get("parameters", {})
            if params.get("triton_final_response", {}).get("bool_param"):
                assert result.as_numpy("text_output") is None
                break
            pieces.append(_text(result.as_numpy("text_output")))
            if "finish_reason" in params:
                final_params = params
    finally:
        client.stop_stream()
    assert len(pieces) >= 2, pieces
    assert "".join(pieces) == want
    assert final_params is not None
    assert 0 < int(final_params["completion_tokens"]["int64_param"]) <= 8


def test_streaming_errors_arrive_on_the_stream(client):
    responses = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("no-such-model", _inputs(PROMPT))
        _, error = responses.get(timeout=60)
    finally:
        client.stop_stream()
    assert isinstance(error, InferenceServerException)
    assert "no-such-model" in error.message()


def test_unknown_model_is_not_found(client):
    with pytest.raises(InferenceServerException) as e:
        client.infer("no-such-model", _inputs(PROMPT))
    assert e.value.status() == "StatusCode.NOT_FOUND"
    assert MODEL_NAME in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no-such-model")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_a_wrong_datatype_is_an_invalid_argument(client):
    with pytest.raises(InferenceServerException) as e:
        client.infer(MODEL_NAME, _inputs(PROMPT, text_datatype="INT32"))
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "text_input must be BYTES" in e.value.message()


def test_api_keys_guard_everything_but_probes():
    s = Server("--grpc-port", "0", "--api-key", "secret")
    try:
        c = triton.InferenceServerClient(url=f"127.0.0.1:{s.grpc_port()}")
        assert c.is_server_live()
        assert c.is_server_ready()
        for headers in (None, {"authorization": "Bearer wrong"}):
            with pytest.raises(InferenceServerException) as e:
                c.infer(MODEL_NAME, _inputs(PROMPT, max_tokens=2), headers=headers)
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(InferenceServerException) as e:
                c.get_model_metadata(MODEL_NAME, headers=headers)
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        for headers in ({"authorization": "Bearer secret"}, {"x-api-key": "secret"}):
            result = c.infer(MODEL_NAME, _inputs(PROMPT, max_tokens=2), headers=headers)
            assert _text(result.as_numpy("text_output"))
            assert c.is_model_ready(MODEL_NAME, headers=headers)
    finally:
        assert s.stop() == 0
