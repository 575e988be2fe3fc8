"""The official openai client against `hangar serve`: completions and chat, streamed
and not, give the same greedy text as `hangar generate`."""

import openai
import pytest

from conftest import MODEL_NAME, hangar_generate, http

PROMPT = "The capital of France is"
CHAT = "Name three colours."


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", timeout=300, max_retries=0)


def test_models_lists_the_served_model(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    # Where it runs, in the model card and in /metrics.
    assert models[0].model_extra["device"] == "cpu"
    assert 'hangar_model_info{model="%s",device="cpu",arch="gemma3"} 1' % MODEL_NAME in \
        http("GET", server.base + "/metrics")[2].decode()


def test_completion_matches_hangar_generate(client):
    want = hangar_generate(PROMPT, 16)
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=16, temperature=0)
    assert r.choices[0].text == want
    assert r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=16, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
        if chunk.usage:
            usage = chunk.usage
    assert text == want
    assert usage.completion_tokens == r.usage.completion_tokens


def test_chat_matches_hangar_generate_chat(client):
    want = hangar_generate(CHAT, 16, chat=True)
    msgs = [{"role": "user", "content": CHAT}]
    r = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=16, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want

    stream = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == want
    assert finish in ("stop", "length")
    assert usage.completion_tokens == r.usage.completion_tokens


def test_n_seed_stop_and_logprobs(client):
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0.9, n=3, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    again = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0.9, n=3, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]

    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=32, temperature=0, stop=["."])
    assert "." not in r.choices[0].text
    assert r.choices[0].finish_reason == "stop"

    r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=4, logprobs=True, top_logprobs=2, temperature=0)
    lp = r.choices[0].logprobs.content
    assert len(lp) >= 1 and len(lp[0].top_logprobs) == 2
    # Greedy: the chosen token is the most likely one.
    assert lp[0].token == lp[0].top_logprobs[0].token

    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2)
    assert len(r.choices[0].logprobs.tokens) == len(r.choices[0].logprobs.token_logprobs)


def test_penalties_bias_and_truncation_are_accepted(client):
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0.7, top_p=0.9,
                                  presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"506": -100},
                                  extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1})
    assert r.choices[0].finish_reason in ("stop", "length")


def test_errors_come_back_in_openai_format(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, temperature=5)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10_000_000)
    assert "context" in str(e.value)
