"""The evaluation harness end to end: `hangar serve` answers /v1/completions with
`echo` + `logprobs` (prompt-token logprobs, `max_tokens: 0`) as the official openai
client expects, and `hangar eval` gives the same multiple-choice results through a
local model and through that endpoint."""

import json
import math
import subprocess
from pathlib import Path

import openai
import pytest

from conftest import MODEL_NAME, ROOT, hangar_bin, model_path

MC_TASK = ROOT / "crates" / "eval" / "data" / "basic_mc.jsonl"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", timeout=300, max_retries=0)


def test_echo_reports_every_prompt_token_with_max_tokens_zero(client):
    prompt = "The capital of France is Paris"
    r = client.completions.create(model=MODEL_NAME, prompt=prompt, echo=True, logprobs=1,
                                  max_tokens=0, temperature=0)
    c = r.choices[0]
    assert c.text == prompt
    lp = c.logprobs
    n = len(lp.tokens)
    assert n == r.usage.prompt_tokens and r.usage.completion_tokens == 0
    assert len(lp.token_logprobs) == len(lp.text_offset) == len(lp.top_logprobs) == n
    assert lp.token_logprobs[0] is None  # nothing precedes the first token
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    # Offsets index the echoed text; BOS takes no room.
    assert "".join(lp.tokens[1:]) == prompt
    for i in range(1, n):
        assert lp.text_offset[i] == len("".join(lp.tokens[1:i]))
        assert prompt[lp.text_offset[i]:].startswith(lp.tokens[i])
        # The best alternative is at least as likely as the actual token.
        assert max(lp.top_logprobs[i].values()) >= lp.token_logprobs[i] - 1e-6


def test_echoed_logprob_equals_the_sampled_logprob(client):
    # Greedy next token after the prompt, with its logprob...
    prompt = "The capital of France is"
    g = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1, temperature=0, logprobs=1)
    tok, want = g.choices[0].logprobs.tokens[0], g.choices[0].logprobs.token_logprobs[0]
    # ...is what echo reports for that token as the last prompt token.
    e = client.completions.create(model=MODEL_NAME, prompt=prompt + tok, echo=True, logprobs=1,
                                  max_tokens=0, temperature=0)
    lp = e.choices[0].logprobs
    assert lp.tokens[-1] == tok
    assert math.isclose(lp.token_logprobs[-1], want, abs_tol=2e-3), (lp.token_logprobs[-1], want)


def test_echo_with_generation_keeps_prompt_logprobs_first(client):
    prompt = "One, two, three,"
    only = client.completions.create(model=MODEL_NAME, prompt=prompt, echo=True, logprobs=0,
                                     max_tokens=0, temperature=0).choices[0].logprobs
    both = client.completions.create(model=MODEL_NAME, prompt=prompt, echo=True, logprobs=0,
                                     max_tokens=3, temperature=0)
    lp = both.choices[0].logprobs
    k = len(only.tokens)
    assert lp.tokens[:k] == only.tokens
    for a, b in zip(lp.token_logprobs[1:k], only.token_logprobs[1:]):
        assert math.isclose(a, b, abs_tol=1e-4)
    assert len(lp.tokens) == k + both.usage.completion_tokens
    assert both.choices[0].text.startswith(prompt)
    assert lp.text_offset[k] == len(prompt)


def test_bad_echo_requests_are_refused_with_400(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_NAME, prompt="Hi", echo=True, logprobs=1,
                                  max_tokens=0, stream=True)


def run_eval(*args, out):
    # Each evaluation is logged as a tracking run in this home.
    cmd = [hangar_bin(), "--home", str(Path(out).parent / "home"), "eval", "--task", str(MC_TASK),
           "--json", "--out", str(out), *args]
    p = subprocess.run(cmd, capture_output=True, timeout=600, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), [json.loads(l) for l in Path(out).read_text().splitlines()]


def test_eval_local_and_endpoint_agree(server, tmp_path):
    local, local_items = run_eval("--model", model_path(), "--threads", "2", out=tmp_path / "local.jsonl")
    remote, remote_items = run_eval("--endpoint", server.base, out=tmp_path / "remote.jsonl")
    assert local["kind"] == "multiple_choice" and local["metrics"]["items"] == 20
    # A 270M model knows that Paris is the capital of France and dogs say woof.
    assert local["metrics"]["acc"] >= 0.7, local["metrics"]
    assert remote["metrics"]["acc"] == local["metrics"]["acc"]
    assert remote["metrics"]["acc_norm"] == local["metrics"]["acc_norm"]
    for a, b in zip(local_items, remote_items):
        assert a["pred"] == b["pred"]
        for x, y in zip(a["logliks"], b["logliks"]):
            assert math.isclose(x, y, abs_tol=1e-3), (a, b)


def test_an_evaluation_is_logged_as_a_tracking_run(tmp_path):
    r, items = run_eval("--model", model_path(), "--threads", "2", "--limit", "5",
                        out=tmp_path / "items.jsonl")
    run_id = r["run_id"]
    assert run_id, r
    home = tmp_path / "home"
    shown = json.loads(subprocess.run([hangar_bin(), "--home", str(home), "runs", "show", run_id,
                                       "--json"], capture_output=True, text=True,
                                      check=True).stdout)
    assert shown["run"]["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in shown["run"]["metrics"]}
    assert metrics["acc"] == r["metrics"]["acc"]
    params = {p["key"]: p["value"] for p in shown["run"]["params"]}
    assert params["task"] == "basic_mc" and "model" in params, params
    # The model is identified by its digest (hashed here: a plain file), with its
    # quantization, and the limit is recorded.
    import hashlib
    digest = hashlib.sha256(Path(model_path()).read_bytes()).hexdigest()
    assert params["model_sha256"] == digest and params["model_sha256_source"] == "file", params
    assert params["registry_ref"] == "none" and params["quantization"] == "Q4_K_M", params
    assert params["limit"] == "5", params
    assert [a["path"] for a in shown["artifacts"]] == ["items.jsonl"]
    listed = subprocess.run([hangar_bin(), "--home", str(home), "runs", "list", "-e", "hangar-eval"],
                            capture_output=True, text=True, check=True).stdout
    assert run_id in listed


def test_a_registry_model_is_logged_with_the_registry_digest_and_version(tmp_path):
    home = tmp_path / "home"
    subprocess.run([hangar_bin(), "--home", str(home), "registry", "import", model_path(), "--name", "gemma"],
                   check=True, capture_output=True)
    f = json.loads(subprocess.run([hangar_bin(), "--home", str(home), "registry", "show", "gemma@1", "--json"],
                                  check=True, capture_output=True, text=True).stdout)["files"][0]
    r, _ = run_eval("--model", "gemma", "--threads", "2", "--limit", "2", out=tmp_path / "items.jsonl")
    p = r["params"]
    assert (p["registry_ref"], p["model_sha256"], p["model_sha256_source"]) == ("gemma@1", f["sha256"], "registry"), p
    assert p["quantization"] == "Q4_K_M" and r["task"] == "basic_mc" and p["limit"] == "2", p
