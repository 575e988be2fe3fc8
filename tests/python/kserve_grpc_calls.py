"""Calls `hangar serve`'s gRPC API with KServe's InferenceGRPCClient and prints what
came back as JSON. Run as a script by test_kserve_grpc_client.py: kserve's and
tritonclient's generated protobuf modules both define `inference.*` and cannot be
imported into one Python process (duplicate symbol in the descriptor pool)."""

import asyncio
import json
import sys

import grpc
from kserve import InferenceGRPCClient, InferInput, InferRequest


def request(model, prompt, max_tokens):
    text = InferInput(name="text_input", shape=[1], datatype="BYTES", data=[prompt])
    return InferRequest(model_name=model, infer_inputs=[text],
                        parameters={"max_tokens": max_tokens, "temperature": 0})


async def main(url, model, prompt, key):
    auth = (("authorization", f"Bearer {key}"),)
    out = {}
    async with InferenceGRPCClient(url=url, retries=2) as c:
        out["live"] = await c.is_server_live()
        out["ready"] = await c.is_server_ready()
        out["model_ready"] = await c.is_model_ready(model, headers=auth)
        resp = await c.infer(request(model, prompt, 8), headers=auth)
        o = resp.outputs[0]
        text = o.as_numpy().reshape(-1)[0]
        out["output"] = {"name": o.name, "datatype": o.datatype,
                         "text": text.decode() if isinstance(text, bytes) else str(text)}
        out["finish_reason"] = resp.parameters["finish_reason"].string_param
        out["completion_tokens"] = resp.parameters["completion_tokens"].int64_param
        for name, m, headers in [("unknown_model", "no-such-model", auth), ("no_key", model, None)]:
            try:
                await c.infer(request(m, prompt, 2), headers=headers)
                out[name] = None
            except grpc.RpcError as e:
                out[name] = {"code": e.code().name, "details": e.details()}
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
