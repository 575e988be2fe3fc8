"""`hangar serve --speculative ngram|draft` through the openai client: concurrent
streamed and whole chat answers equal a plain server's token for token (greedy, and
sampled with a seed for prompt lookup), and /metrics counts the drafts the engine
verified."""
import concurrent.futures
import re

import openai

from conftest import MODEL_NAME, Server, http, model_path

PROMPTS = [
    "Repeat this sentence exactly, twice: The quick brown fox jumps over the lazy dog.",
    "Rename the variable x to total in this code and print the whole code:\n"
    "def f(items):\n    x = 0\n    for i in items:\n        x = x + i\n    return x\n",
    "Passage: Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891.\n"
    "Copy the passage, then say where she was born.",
]


def answers(base: str, sampled: bool = True) -> list:
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")

    def one(i):
        p = PROMPTS[i % len(PROMPTS)]
        kw = dict(model=MODEL_NAME, messages=[{"role": "user", "content": p}], max_tokens=48,
                  logprobs=True)
        if i >= len(PROMPTS):
            kw.update(temperature=0.8, seed=100 + i)
        else:
            kw.update(temperature=0)
        if i % 2 == 0:
            r = client.chat.completions.create(**kw)
            return [t.token for t in r.choices[0].logprobs.content], r.choices[0].finish_reason
        toks, finish = [], None
        for ev in client.chat.completions.create(stream=True, **kw):
            for ch in ev.choices:
                toks += [t.token for t in (ch.logprobs.content if ch.logprobs else []) or []]
                finish = ch.finish_reason or finish
        return toks, finish

    # Three at a time: under the default --spec-max-batch of 4, all of them draft.
    n = 2 * len(PROMPTS) if sampled else len(PROMPTS)
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        return list(ex.map(one, range(n)))


def metric(base: str, name: str) -> float:
    _, _, body = http("GET", base + "/metrics")
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body.decode(), re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def test_speculative_server_answers_like_a_plain_one():
    plain = Server()
    try:
        want = answers(plain.base)
        assert metric(plain.base, "hangar_spec_decode_draft_tokens_total") == 0
    finally:
        plain.stop()
    spec = Server("--speculative", "ngram", "--draft-tokens", "6")
    try:
        assert "speculative decoding by prompt lookup" in spec.read_log()
        got = answers(spec.base)
        drafted = metric(spec.base, "hangar_spec_decode_draft_tokens_total")
        accepted = metric(spec.base, "hangar_spec_decode_accepted_tokens_total")
        rate = metric(spec.base, "hangar_spec_decode_acceptance_rate")
    finally:
        spec.stop()
    for i, (w, g) in enumerate(zip(want, got)):
        assert g == w, f"request {i}"
        assert len(w[0]) > 0
    assert drafted > 0 and 0 < accepted <= drafted, (drafted, accepted)
    assert abs(rate - accepted / drafted) < 1e-6


def test_a_draft_model_server_answers_greedy_like_a_plain_one():
    # The draft is the model itself: it proposes what the target would say, so most
    # drafts are accepted, and the answers must not change. (Sampled answers under a
    # draft model follow the target's distribution by rejection sampling, not its
    # random stream, so only greedy ones are compared token for token.)
    plain = Server()
    try:
        want = answers(plain.base, sampled=False)
    finally:
        plain.stop()
    spec = Server("--speculative", "draft", "--draft-model", model_path(), "--draft-tokens", "4")
    try:
        assert "speculative decoding by the draft model" in spec.read_log()
        got = answers(spec.base, sampled=False)
        drafted = metric(spec.base, "hangar_spec_decode_draft_tokens_total")
        accepted = metric(spec.base, "hangar_spec_decode_accepted_tokens_total")
        failures = metric(spec.base, "hangar_spec_decode_draft_failures_total")
    finally:
        spec.stop()
    assert got == want
    assert drafted > 0 and 0 < accepted <= drafted, (drafted, accepted)
    assert failures == 0


def test_a_missing_draft_model_is_a_clear_error():
    try:
        Server("--speculative", "draft", "--draft-model", "/nonexistent.gguf")
    except RuntimeError as e:
        assert "/nonexistent.gguf" in str(e), str(e)
    else:
        raise AssertionError("serve started without its draft model")
