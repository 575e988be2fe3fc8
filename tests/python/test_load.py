"""Concurrency: 16 streams at once, client disconnects, KV exhaustion."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import urllib.request
import json

from conftest import MODEL_NAME, Server

N_TOKENS = 24


def _stream(base, i):
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=600, max_retries=0)
    stream = client.completions.create(
        model=MODEL_NAME, prompt=f"Request {i}: a list of animals:", max_tokens=N_TOKENS, temperature=0.8,
        seed=i, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    finish, usage, chunks = None, None, 0
    for chunk in stream:
        if chunk.choices:
            chunks += 1
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    return finish, usage.completion_tokens, chunks


def test_sixteen_concurrent_streams_finish_with_correct_token_counts(server):
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: _stream(server.base, i), range(16)))
    for finish, completion_tokens, chunks in results:
        assert finish == "length"
        assert completion_tokens == N_TOKENS
        assert chunks >= 1
    server.wait_metric("hangar_kv_blocks_used", 0.0)
    server.wait_metric("hangar_running_sequences", 0.0)


def test_a_disconnected_stream_frees_its_blocks(server):
    before = server.metrics().get("hangar_cancelled_requests_total", 0.0)
    body = json.dumps({"model": MODEL_NAME, "prompt": "An endless story:", "max_tokens": 4000,
                       "ignore_eos": True, "stream": True}).encode()
    req = urllib.request.Request(server.base + "/v1/completions", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    resp = urllib.request.urlopen(req, timeout=120)
    seen = 0
    while seen < 3:
        line = resp.readline()
        assert line, "stream ended early"
        if line.startswith(b"data: "):
            seen += 1
    assert server.metrics()["hangar_kv_blocks_used"] > 0
    resp.close()
    server.wait_metric("hangar_running_sequences", 0.0)
    server.wait_metric("hangar_kv_blocks_used", 0.0)
    assert server.metrics()["hangar_cancelled_requests_total"] >= before + 1


def test_kv_exhaustion_preempts_and_finishes_every_request():
    s = Server("--max-tokens-in-flight", "640", "--max-batch-tokens", "64")
    try:
        client = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=600, max_retries=0)

        def one(i):
            r = client.completions.create(model=MODEL_NAME, prompt=f"Story {i}:", max_tokens=64, temperature=0,
                                          extra_body={"ignore_eos": True})
            return r.usage.completion_tokens

        with ThreadPoolExecutor(12) as pool:
            counts = list(pool.map(one, range(12)))
        assert counts == [64] * 12
        m = s.metrics()
        assert m["hangar_preemptions_total"] > 0
        s.wait_metric("hangar_kv_blocks_used", 0.0)
    finally:
        s.stop()
