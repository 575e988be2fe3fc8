"""Hostile and sloppy clients: malformed JSON, wrong types, huge bodies, missing keys.
Every one gets a 4xx with a message, and the server keeps serving. SIGTERM drains."""

import json
import threading
import urllib.request

import openai
import pytest

from conftest import MODEL_NAME, Server, http

BAD = [
    (b'{"prompt": ', 400),
    (b"definitely not json", 400),
    (b"", 400),
    (b'{"prompt": "x", "max_tokens": "ten"}', 400),
    (b'{"prompt": {"nested": true}}', 400),
    (b'{"prompt": "x", "temperature": -0.5}', 400),
    (b'{"prompt": "x", "top_p": 1.5}', 400),
    (b'{"prompt": "x", "n": 1000}', 400),
    (b'{"prompt": "x", "logprobs": 99}', 400),
    (b'{"prompt": "x", "stop": 12}', 400),
    (b'{"prompt": [4294967295]}', 400),
    (b'{"prompt": "x", "model": "gpt-9"}', 404),
    (b'[]', 400),
    (b'null', 400),
]


@pytest.mark.parametrize("body,status", BAD)
def test_bad_completion_bodies_get_4xx_with_a_message(server, body, status):
    code, _, resp = http("POST", server.base + "/v1/completions", body, {"content-type": "application/json"})
    assert code == status, resp
    err = json.loads(resp)["error"]
    assert err["message"]
    assert err["type"]


def test_bad_chat_and_kserve_bodies(server):
    for path, body in [
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}], "max_tokens": -3}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'),
        ("/v2/models/%s/infer" % MODEL_NAME, b'{"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}]}'),
        ("/v2/models/%s/infer" % MODEL_NAME, b'{"inputs": "x"}'),
        ("/v2/models/%s/generate" % MODEL_NAME, b'{"text_input": "x", "parameters": {"temperature": "hot"}}'),
    ]:
        code, _, resp = http("POST", server.base + path, body, {"content-type": "application/json"})
        assert 400 <= code < 500, (path, body, resp)
        assert json.loads(resp)["error"]


def test_huge_body_is_refused_and_the_server_stays_up(server):
    # Announce 3 MiB (over the 2 MiB default) and send only the start: the server must
    # answer 413 from the header alone, without waiting for (or buffering) the rest.
    import socket
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        head = (f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"content-length: {3 * 1024 * 1024}\r\n\r\n").encode()
        sock.sendall(head + b'{"prompt": "' + b"a" * 1000)
        resp = b""
        while b"\r\n\r\n" not in resp or not resp.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            resp += chunk
    status = int(resp.split(b" ", 2)[1])
    assert status == 413, resp
    body = resp.split(b"\r\n\r\n", 1)[1]
    assert "limit" in json.loads(body)["error"]["message"]
    code, _, _ = http("GET", server.base + "/v2/health/ready")
    assert code == 200
    code, body = server.post_json("/v1/completions", {"prompt": "Hello", "max_tokens": 2})
    assert code == 200 and body["choices"]
    server.wait_metric("hangar_kv_blocks_used", 0.0)


def test_body_over_a_small_limit_is_refused():
    s = Server("--max-body-bytes", "4096")
    try:
        code, _, resp = http("POST", s.base + "/v1/completions", json.dumps({"prompt": "a" * 8000}).encode(),
                             {"content-type": "application/json"})
        assert code == 413 and json.loads(resp)["error"]["code"] == "request_too_large"
        code, body = s.post_json("/v1/completions", {"prompt": "Hi", "max_tokens": 1})
        assert code == 200
    finally:
        s.stop()


def test_api_keys_from_flag_and_environment():
    s = Server("--api-key", "flag-key", env={"HANGAR_API_KEYS": "env-a,env-b"})
    try:
        code, body = s.post_json("/v1/completions", {"prompt": "Hi", "max_tokens": 1})
        assert code == 401 and body["error"]["type"] == "authentication_error"
        code, _ = s.post_json("/v1/completions", {"prompt": "Hi", "max_tokens": 1}, {"authorization": "Bearer wrong"})
        assert code == 401
        client = openai.OpenAI(base_url=s.base + "/v1", api_key="flag-key", timeout=120, max_retries=0)
        assert client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=1).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.base + "/v1", api_key="nope", max_retries=0).models.list()
        assert http("GET", s.base + "/v2/health/live")[0] == 200
    finally:
        s.stop()
    s = Server(env={"HANGAR_API_KEYS": "env-a,env-b"})
    try:
        client = openai.OpenAI(base_url=s.base + "/v1", api_key="env-b", timeout=120, max_retries=0)
        assert client.models.list().data
        code, _ = s.post_json("/v1/completions", {"prompt": "Hi", "max_tokens": 1})
        assert code == 401
    finally:
        s.stop()


def test_sigterm_drains_in_flight_streams():
    s = Server()
    result = {}

    def stream():
        body = json.dumps({"prompt": "Count:", "max_tokens": 24, "ignore_eos": True, "stream": True}).encode()
        req = urllib.request.Request(s.base + "/v1/completions", data=body, method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            result["lines"] = [l.strip() for l in r.read().decode().splitlines() if l.startswith("data: ")]

    t = threading.Thread(target=stream)
    t.start()
    # Wait until the request is running, then ask the server to stop.
    import time
    deadline = time.time() + 60
    while s.metrics().get("hangar_running_sequences", 0) < 1 and time.time() < deadline:
        time.sleep(0.02)
    rc = s.stop()
    t.join(120)
    assert result["lines"][-1] == "data: [DONE]"
    assert rc == 0
