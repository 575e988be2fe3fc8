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


def test_mlflow_prompt_registry_calls_use_the_same_store():
    """mlflow-skinny's `register_prompt` / `load_prompt` / aliases on `hangar serve`:
    the prompts land in the registry's prompt store (`hangar prompts` shows them)."""
    import os
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import mlflow
    from mlflow import MlflowClient

    home = tempfile.mkdtemp(prefix="hangar-mlflow-prompts-")
    admin = hangar(home, "registry", "token", "create", "--name", "admin", "--role", "admin", "--json")["token"]
    srv = Server("--no-model", "--home", home, with_model=False)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_TOKEN", "HANGAR_TOKEN")}
    try:
        os.environ["MLFLOW_TRACKING_TOKEN"] = admin
        os.environ["HANGAR_TOKEN"] = admin
        mlflow.set_tracking_uri(srv.base)
        v1 = mlflow.genai.register_prompt(name="summary", template="Summarise: {{ text }}",
                                          commit_message="first")
        assert v1.version == 1
        chat = [{"role": "system", "content": "You write {{ style }} summaries."},
                {"role": "user", "content": "Summarise: {{ text }}"}]
        v2 = mlflow.genai.register_prompt(name="summary", template=chat, tags={"team": "nlp"})
        assert v2.version == 2
        mlflow.genai.set_prompt_alias("summary", alias="production", version=1)
        mlflow.genai.set_prompt_alias("summary", alias="beta", version=2)

        p = mlflow.genai.load_prompt("prompts:/summary/1")
        assert p.template == "Summarise: {{ text }}"
        assert p.format(text="a long story") == "Summarise: a long story"
        p = mlflow.genai.load_prompt("prompts:/summary@beta")
        assert p.version == 2 and p.template == chat
        assert p.tags.get("team") == "nlp"
        assert mlflow.genai.load_prompt("prompts:/summary@production").version == 1
        assert mlflow.genai.load_prompt("prompts:/summary@latest").version == 2
        # The client sees a prompt, not a model (it reads the registered model's tags).
        c = MlflowClient(tracking_uri=srv.base)
        with pytest.raises(mlflow.exceptions.MlflowException):
            c.get_registered_model("summary")

        # The same prompts through Hangar's own CLI and routes.
        shown = hangar(home, "prompts", "show", "summary@beta", "--json")
        assert shown["template"] == {"system": "You write {{ style }} summaries.",
                                     "user": "Summarise: {{ text }}"}
        assert shown["variables"] == ["style", "text"]
        assert hangar(home, "prompts", "show", "summary", "--json")["version"] == 1
        # And the other way round: a version made by Hangar loads in MLflow.
        hangar(home, "prompts", "create", "summary", "--text", "TL;DR {{ text }}", "--json")
        assert mlflow.genai.load_prompt("prompts:/summary/3").template == "TL;DR {{ text }}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        srv.stop()
