"""`hangar serve --tensor-parallel 2` / `--pipeline-parallel 2`: the model split over
two CPU ranks answers the openai client like the whole model (the first greedy
tokens; later ones may part at a near-tie, crates/parallel/README.md), split into two
pipeline stages token for token; each says where it runs, and an impossible degree
stops the server with the reason."""
import json

import openai
import pytest

from conftest import MODEL_NAME, Server, http


def first_tokens(base, n=6):
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    r = client.completions.create(model=MODEL_NAME, prompt="The capital of France is",
                                  max_tokens=n, temperature=0, logprobs=0)
    return r.choices[0].logprobs.tokens


def test_two_ranks_answer_like_the_whole_model():
    whole = Server()
    try:
        want = first_tokens(whole.base)
    finally:
        whole.stop()
    tp = Server("--tensor-parallel", "2")
    try:
        _, _, body = http("GET", tp.base + "/v1/models")
        assert json.loads(body)["data"][0]["device"] == "cpu (tensor-parallel 2)"
        got = first_tokens(tp.base)
    finally:
        tp.stop()
    assert got[:4] == want[:4], (got, want)


def test_an_impossible_degree_is_refused_with_the_reason():
    with pytest.raises(RuntimeError) as e:
        Server("--tp", "8")
    assert "attention heads (4)" in str(e.value)


def test_pipeline_stages_answer_token_for_token_like_the_whole_model():
    whole = Server()
    try:
        want = first_tokens(whole.base, 10)
    finally:
        whole.stop()
    pp = Server("--pipeline-parallel", "2", "--micro-batches", "2")
    try:
        _, _, body = http("GET", pp.base + "/v1/models")
        assert "pipeline-parallel 2" in json.loads(body)["data"][0]["device"]
        got = first_tokens(pp.base, 10)
    finally:
        pp.stop()
    assert got == want
