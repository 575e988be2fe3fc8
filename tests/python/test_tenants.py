"""Managed API keys (`hangar keys`) against a real `hangar serve`, through the official
`openai` client: per-key rate limits and daily budgets answer 429 with Retry-After and
OpenAI's error types, a revoked key stops working on a running server, usage is kept
per key (also across a restart), and one key's flood does not starve another key."""

import json
import statistics
import subprocess
import tempfile
import threading
import time

import openai
import pytest

from conftest import MODEL_NAME, Server, hangar_bin, http


def keys(home, *args):
    out = subprocess.run([hangar_bin(), "--home", home, "keys", *args, "--json"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def create(home, name, *limits):
    return keys(home, "create", "--name", name, *limits)["secret"]


def client(srv, secret):
    # max_retries=0: the client would otherwise retry 429s itself and hide them.
    return openai.OpenAI(base_url=srv.base + "/v1", api_key=secret, max_retries=0, timeout=120)


def complete(c, max_tokens=4, prompt="The capital of France is"):
    return c.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens,
                                temperature=0, extra_body={"ignore_eos": True})


@pytest.fixture(scope="module")
def tenants():
    home = tempfile.mkdtemp(prefix="hangar-tenants-")
    secrets = {
        "admin": create(home, "admin", "--role", "admin"),
        "limited": create(home, "limited", "--rpm", "2"),
        "budget": create(home, "budget", "--daily-tokens", "30"),
        "temp": create(home, "temp"),
        "flood": create(home, "flood"),
        "quiet": create(home, "quiet"),
    }
    srv = Server("--home", home, "--api-key", "static-secret", "--max-running", "2",
                 "--max-request-share", "1")
    yield home, srv, secrets
    srv.stop()


def test_keys_list_never_shows_secrets(tenants):
    home, _, secrets = tenants
    listed = keys(home, "list")
    names = sorted(k["key"]["name"] for k in listed["keys"])
    assert names == sorted(secrets)
    text = json.dumps(listed)
    for s in secrets.values():
        assert s not in text


def test_every_kind_of_credential_composes(tenants):
    _, srv, secrets = tenants
    assert complete(client(srv, secrets["temp"])).choices[0].text
    assert complete(client(srv, "static-secret")).choices[0].text
    with pytest.raises(openai.AuthenticationError):
        complete(client(srv, "hk_not-a-key"))
    # A user key reads the registry, as a static key does.
    status, _, _ = http("GET", srv.base + "/v1/registry/models",
                        headers={"authorization": f"Bearer {secrets['temp']}"})
    assert status == 200


def test_requests_per_minute_answer_429_with_retry_after(tenants):
    _, srv, secrets = tenants
    c = client(srv, secrets["limited"])
    complete(c)
    complete(c)
    with pytest.raises(openai.RateLimitError) as e:
        complete(c)
    retry = int(e.value.response.headers["retry-after"])
    assert 1 <= retry <= 61
    err = e.value.body
    assert err["type"] == "rate_limit_exceeded" and err["code"] == "rate_limit_exceeded"
    assert "2 requests per minute" in err["message"]
    # The KServe generate route is limited by the same key.
    status, headers, body = http(
        "POST", srv.base + f"/v2/models/{MODEL_NAME}/generate",
        json.dumps({"text_input": "Hi", "parameters": {"max_tokens": 2}}).encode(),
        {"content-type": "application/json", "authorization": f"Bearer {secrets['limited']}"})
    assert status == 429, body
    assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1
    _, _, text = http("GET", srv.base + "/metrics")
    assert 'hangar_key_rejections_total{key="limited",reason="requests_per_minute"} 2' in text.decode()


def test_daily_budget_is_insufficient_quota_and_survives_restart(tenants):
    home, srv, secrets = tenants
    c = client(srv, secrets["budget"])
    served = 0
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(6):
            complete(c, max_tokens=8)
            served += 1
    assert served >= 2, "30 tokens allow at least two requests of ~16"
    assert e.value.body["type"] == "insufficient_quota"
    assert e.value.body["code"] == "insufficient_quota"
    retry = int(e.value.response.headers["retry-after"])
    assert 1 <= retry <= 86_400
    # Own usage: only this key, with what the requests really used.
    own = json.loads(http("GET", srv.base + "/v1/usage",
                          headers={"authorization": f"Bearer {secrets['budget']}"})[2])
    assert [k["name"] for k in own["data"]] == ["budget"]
    today = own["data"][0]["today"]
    assert today["requests"] == served and today["total_tokens"] >= 30
    assert own["data"][0]["remaining_daily_tokens"] == 0
    # An admin key sees every key.
    every = json.loads(http("GET", srv.base + "/v1/usage",
                            headers={"authorization": f"Bearer {secrets['admin']}"})[2])
    assert {k["name"] for k in every["data"]} == set(secrets)
    # The budget is persisted: a restarted server on the same home still refuses.
    # Usage is written back every second (tenants::REFRESH; a crash may lose up to
    # that much, docs/TENANTS.md), and a server reads a key's usage when it first
    # sees the key: start the second one after the first has written.
    time.sleep(2.5)
    again = Server("--home", home)
    try:
        with pytest.raises(openai.RateLimitError) as e2:
            complete(client(again, secrets["budget"]))
        assert e2.value.body["type"] == "insufficient_quota"
        assert complete(client(again, secrets["admin"])).choices[0].text
    finally:
        again.stop()


def test_a_revoked_key_stops_working_without_restart(tenants):
    home, srv, secrets = tenants
    c = client(srv, secrets["temp"])
    assert complete(c).choices[0].text
    keys(home, "revoke", "temp")
    deadline = time.time() + 10
    while True:
        try:
            complete(c, max_tokens=1)
        except openai.AuthenticationError:
            break
        assert time.time() < deadline, "the revoked key still works after 10 s"
        time.sleep(0.2)
    # Other keys are unaffected.
    assert complete(client(srv, secrets["quiet"])).choices[0].text


def quiet_latencies(c, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        complete(c, max_tokens=16)
        out.append(time.perf_counter() - t)
    return out


def test_one_keys_flood_does_not_starve_another(tenants):
    _, srv, secrets = tenants
    quiet = client(srv, secrets["quiet"])
    complete(quiet, max_tokens=16)  # warm up
    alone = statistics.median(quiet_latencies(quiet, 5))

    stop = threading.Event()
    flood_lat = []

    def flood():
        c = client(srv, secrets["flood"])
        while not stop.is_set():
            t = time.perf_counter()
            complete(c, max_tokens=16)
            flood_lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # let the flood fill both slots and the queue
    loaded = statistics.median(quiet_latencies(quiet, 5))
    stop.set()
    for t in threads:
        t.join(timeout=120)
    flood_p50 = statistics.median(flood_lat)
    print(f"\nquiet p50 alone {alone:.3f}s, under flood {loaded:.3f}s "
          f"({loaded / alone:.2f}x); flood p50 {flood_p50:.3f}s over {len(flood_lat)} requests")
    # The flood really queued (12 clients on 2 slots), yet the quiet key kept its pace.
    assert flood_p50 > 2 * loaded
    assert loaded <= 2 * alone
