"""KServe's own Python client (`kserve.InferenceGRPCClient`) against the KServe V2 gRPC
API of `hangar serve --grpc-port`."""

import asyncio

import grpc
import pytest

kserve = pytest.importorskip("kserve", reason="pip install kserve (tests/python/requirements.txt)")
from kserve import InferenceGRPCClient, InferInput, InferRequest  # noqa: E402

from conftest import MODEL_NAME, Server, hangar_generate  # noqa: E402
from test_triton_grpc_client import grpc_port  # noqa: E402

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def url():
    s = Server("--grpc-port", "0", "--api-key", "secret")
    yield f"127.0.0.1:{grpc_port(s)}"
    assert s.stop() == 0


def _request(model, max_tokens=8):
    text = InferInput(name="text_input", shape=[1], datatype="BYTES", data=[PROMPT])
    return InferRequest(model_name=model, infer_inputs=[text],
                        parameters={"max_tokens": max_tokens, "temperature": 0})


async def _calls(url):
    key = (("authorization", "Bearer secret"),)
    async with InferenceGRPCClient(url=url, retries=1) as c:
        live = await c.is_server_live()
        ready = await c.is_server_ready()
        model_ready = await c.is_model_ready(MODEL_NAME, headers=key)
        resp = await c.infer(_request(MODEL_NAME), headers=key)
        errors = {}
        for name, model, headers in [("unknown", "no-such-model", key),
                                     ("no_key", MODEL_NAME, None)]:
            try:
                await c.infer(_request(model, 2), headers=headers)
            except grpc.RpcError as e:
                errors[name] = (e.code(), e.details())
    return live, ready, model_ready, resp, errors


def test_kserve_client_infers_text_and_sees_errors(url):
    want = hangar_generate(PROMPT, 8)
    live, ready, model_ready, resp, errors = asyncio.run(_calls(url))
    assert live and ready and model_ready
    out = resp.outputs[0]
    assert out.name == "text_output"
    got = out.as_numpy().reshape(-1)[0]
    assert (got.decode() if isinstance(got, bytes) else str(got)) == want
    assert resp.parameters["finish_reason"].string_param in ("stop", "length")
    assert errors["unknown"][0] == grpc.StatusCode.NOT_FOUND
    assert MODEL_NAME in errors["unknown"][1]
    assert errors["no_key"][0] == grpc.StatusCode.UNAUTHENTICATED
