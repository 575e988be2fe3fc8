"""`use_beam_search` on /v1/completions through the openai client (vLLM's parameters
via extra_body): width 1 is greedy decoding, wider beams return the n best distinct
answers, and what beam search cannot do is refused with a 400 naming the parameter."""
import re

import openai
import pytest

from conftest import MODEL_NAME, http

PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused")


def beam(client, **kw):
    extra = {"use_beam_search": True}
    extra.update(kw.pop("extra", {}))
    return client.completions.create(model=MODEL_NAME, prompt=PROMPT, temperature=0,
                                     extra_body=extra, **kw)


def test_width_one_is_greedy(client):
    greedy = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10,
                                       temperature=0)
    one = beam(client, max_tokens=10, n=1, best_of=1)
    assert one.choices[0].text == greedy.choices[0].text
    assert one.usage.prompt_tokens == greedy.usage.prompt_tokens


def test_wider_beams_return_the_n_best_distinct_answers(client):
    r = beam(client, max_tokens=8, n=3, best_of=4, extra={"length_penalty": 0.5})
    texts = [c.text for c in r.choices]
    assert len(texts) == 3 and len(set(texts)) == 3, texts
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    assert r.usage.completion_tokens > 0


@pytest.mark.parametrize("kw,param", [
    ({"stream": False, "extra": {"length_penalty": 1.0, "use_beam_search": False}}, "length_penalty"),
    ({"stop": ["."]}, "stop"),
    ({"n": 3, "best_of": 2}, "best_of"),
    ({"best_of": 99}, "best_of"),
])
def test_unsupported_combinations_are_400s(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        beam(client, max_tokens=4, **kw)
    assert param in str(e.value), str(e.value)


def test_temperature_and_streaming_are_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0.7,
                                  extra_body={"use_beam_search": True})
    assert "temperature" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0,
                                  stream=True, extra_body={"use_beam_search": True})
    assert "stream" in str(e.value)


def test_chat_beam_search(client):
    msgs = [{"role": "user", "content": "Name a primary color."}]
    greedy = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=12,
                                            temperature=0)
    one = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=12,
                                         temperature=0,
                                         extra_body={"use_beam_search": True, "best_of": 1})
    assert one.choices[0].message.content == greedy.choices[0].message.content
    two = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=12, n=2,
                                         temperature=0,
                                         extra_body={"use_beam_search": True, "best_of": 3})
    texts = [c.message.content for c in two.choices]
    assert len(texts) == 2 and texts[0] != texts[1], texts
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=4, temperature=0,
                                       logprobs=True, extra_body={"use_beam_search": True})
    assert "logprobs" in str(e.value)


def test_beam_answers_count_in_the_metrics(client, server):
    def generated():
        _, _, body = http("GET", server.base + "/metrics")
        m = re.search(r"^hangar_generation_tokens_total(?:\{[^}]*\})? (\S+)$", body.decode(), re.M)
        return float(m.group(1))
    before = generated()
    r = beam(client, max_tokens=6, n=2, best_of=2)
    assert generated() - before == r.usage.completion_tokens
