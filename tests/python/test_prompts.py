"""Stored prompts: a template created with `hangar prompts create` renders a chat
request on the default model through the official `openai` client
(`extra_body={"prompt": ..., "variables": ...}`), gives the same greedy answer as the
same messages sent by hand, and the response names the version used. `hangar judge
--prompt` takes its grading prompt from the same store."""

import json
import subprocess
import tempfile

import openai
import pytest

from conftest import MODEL_NAME, ROOT, Server, hangar_bin, http


def hangar(home, *args):
    p = subprocess.run([hangar_bin(), "--home", home, *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout) if "--json" in args else p.stdout


@pytest.fixture(scope="module")
def served():
    home = tempfile.mkdtemp(prefix="hangar-prompts-")
    hangar(home, "prompts", "create", "capital", "--system", "You answer with one word.",
           "--text", "What is the capital of {{ country }}?", "--json")
    v2 = hangar(home, "prompts", "create", "capital", "--text", "Name the capital of {{ country }}.",
                "--alias", "production", "--json")
    assert v2["reference"] == "capital@2" and v2["stage"] == "production"
    srv = Server(env={"HANGAR_HOME": home})
    yield home, srv
    srv.stop()


def test_chat_request_rendered_from_a_stored_prompt(served):
    home, srv = served
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused")
    common = dict(model=MODEL_NAME, max_tokens=8, temperature=0)
    stored = client.chat.completions.create(
        messages=[], extra_body={"prompt": "capital@1", "variables": {"country": "France"}}, **common)
    by_hand = client.chat.completions.create(messages=[
        {"role": "system", "content": "You answer with one word."},
        {"role": "user", "content": "What is the capital of France?"},
    ], **common)
    assert stored.choices[0].message.content == by_hand.choices[0].message.content
    assert stored.usage.prompt_tokens == by_hand.usage.prompt_tokens
    assert stored.model_extra["prompt"] == {"name": "capital", "version": 1, "reference": "capital@1"}
    assert "prompt" not in (by_hand.model_extra or {})

    # No selector: the production version.
    r = client.chat.completions.create(messages=[], extra_body={"prompt": "capital", "variables": {"country": "Peru"}},
                                       **common)
    assert r.model_extra["prompt"]["reference"] == "capital@2"

    # A missing variable is a 400 naming it, in OpenAI's error format.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(messages=[], extra_body={"prompt": "capital@1", "variables": {}}, **common)
    assert e.value.body["param"] == "variables" and "country" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(messages=[], extra_body={"prompt": "nope", "variables": {}}, **common)


def test_prompt_routes_under_the_registry_api(served):
    _, srv = served
    status, _, body = http("GET", srv.base + "/v1/registry/prompts")
    assert status == 200, body
    (p,) = json.loads(body)["prompts"]
    assert (p["name"], p["versions"], p["production"]) == ("capital", 2, 2)
    status, _, body = http("POST", srv.base + "/v1/registry/prompts/capital/versions/1/render",
                           json.dumps({"variables": {"country": "Chile"}}).encode(),
                           {"content-type": "application/json"})
    assert status == 200, body
    assert json.loads(body)["user"] == "What is the capital of Chile?"
    # Anonymous network callers read; they may not write.
    status, _, body = http("POST", srv.base + "/v1/registry/prompts/capital/versions",
                           json.dumps({"user": "x"}).encode(), {"content-type": "application/json"})
    assert status in (401, 403), body


def test_judge_takes_its_grading_prompt_from_the_store(served, tmp_path):
    home, srv = served
    hangar(home, "prompts", "create", "grader", "--system",
           "Rate the answer from 1 to 10 and write the score as: Rating: [[5]]",
           "--text", "Question: {{ question }}\nAnswer: {{ answer }}", "--json")
    cmd = [hangar_bin(), "--home", home, "judge", "-i", str(ROOT / "crates/eval/data/judge_absolute.jsonl"),
           "--endpoint", srv.base, "--prompt", "grader", "--max-tokens", "24", "--no-cache", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["params"]["prompt"] == "grader@1"
    assert r["metrics"]["rated"] + r["metrics"]["unparseable"] == 2
    # The run logged to tracking carries the prompt version.
    shown = json.loads(subprocess.run([hangar_bin(), "--home", home, "runs", "show", r["run_id"], "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    assert "grader@1" in json.dumps(shown)
