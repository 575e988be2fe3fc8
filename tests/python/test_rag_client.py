"""Retrieval-augmented generation end to end: `hangar ingest` (CLI) of part of the RAG
corpus (tests/data/rag/corpus) into a temporary Hangar home, `hangar rag` on the CLI,
then a live `hangar serve --model ... --embedding-model ...` on that home answering
through the official `openai` client with `extra_body={"retrieval": {...}}` (whole and
streamed) and on `POST /v1/rag/chat`; citations must point at the answering file.
Needs the default model and all-MiniLM-L6-v2 (skipped without them, failed under
HANGAR_REQUIRE_MODEL=1)."""
import json
import shutil
import subprocess
import tempfile

import openai
import pytest

from conftest import MODEL_NAME, ROOT, Server, hangar_bin, http, model_path
from test_embeddings_client import embedder_dir

CORPUS = "tests/data/rag/corpus"
FILES = [f"{CORPUS}/registry.md", f"{CORPUS}/track.md", f"{CORPUS}/vector.md"]
KEY = "rag-secret"
REGISTRY_Q = "Which roles can registry tokens have?"


def hangar(home, *args, timeout=600):
    out = subprocess.run([hangar_bin(), "--home", home, *args], cwd=ROOT, check=True,
                         capture_output=True, timeout=timeout, text=True)
    return out.stdout


@pytest.fixture(scope="module")
def home():
    d = tempfile.mkdtemp(prefix="hangar-rag-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ingested(home):
    emb = embedder_dir()
    first = json.loads(hangar(home, "ingest", *FILES, "--collection", "docs",
                              "--embedding-model", emb, "--threads", "2", "--json"))
    again = json.loads(hangar(home, "ingest", *FILES, "--collection", "docs",
                              "--embedding-model", emb, "--threads", "2", "--json"))
    return emb, first, again


@pytest.fixture(scope="module")
def srv(home, ingested):
    emb, _, _ = ingested
    s = Server("--embedding-model", emb, "--api-key", KEY, "--no-registry-api",
               env={"HANGAR_HOME": home})
    yield s
    s.stop()


def client(srv):
    return openai.OpenAI(base_url=srv.base + "/v1", api_key=KEY)


def test_ingest_reports_added_then_unchanged(ingested):
    _, first, again = ingested
    assert (first["added"], first["updated"], first["unchanged"], first["removed"]) == (3, 0, 0, 0)
    assert first["chunks"] >= 3 and first["collection"] == "docs"
    assert (again["added"], again["updated"], again["unchanged"], again["chunks"]) == (0, 0, 3, 0)


def test_cli_rag_answers_with_citations(home, ingested):
    emb, _, _ = ingested
    out = json.loads(hangar(home, "rag", REGISTRY_Q, "--collection", "docs", "--model", model_path(),
                            "--embedding-model", emb, "--top-k", "3", "-n", "24", "--threads", "2",
                            "--json"))
    assert out["prompt_template"] == "hangar-rag@1"
    assert out["answer"]
    assert [c["index"] for c in out["citations"]] == [1, 2, 3]
    assert out["citations"][0]["source"] == f"{CORPUS}/registry.md"


def test_chat_completions_with_extra_body_retrieval(srv):
    r = client(srv).chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": REGISTRY_Q}],
        max_tokens=32, temperature=0, extra_body={"retrieval": {"collection": "docs", "top_k": 3}})
    assert r.object == "chat.completion" and r.choices[0].message.content
    cites = r.model_extra["citations"]
    assert [c["index"] for c in cites] == [1, 2, 3]
    assert cites[0]["source"] == f"{CORPUS}/registry.md"
    assert "reader < writer < promoter < admin" in cites[0]["text"]
    assert cites[0]["score"] >= cites[1]["score"] >= cites[2]["score"]
    for c in cites:
        assert set(c) >= {"id", "source", "chunk", "score", "text", "start", "end"}
        assert isinstance(c["id"], str) and len(c["id"]) == 36
    # The retrieved passage is where the payload says in the source file.
    src = (ROOT / cites[0]["source"]).read_text()
    assert src.encode()[cites[0]["start"]:cites[0]["end"]].decode() == cites[0]["text"]


def test_streaming_carries_citations_on_the_first_chunk(srv):
    stream = client(srv).chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Where does the experiment tracker store its data?"}],
        max_tokens=24, temperature=0, stream=True,
        extra_body={"retrieval": {"collection": "docs", "top_k": 2}})
    chunks = list(stream)
    first = chunks[0]
    assert first.choices[0].delta.role == "assistant"
    cites = first.model_extra["citations"]
    assert len(cites) == 2 and cites[0]["source"] == f"{CORPUS}/track.md"
    assert all("citations" not in (c.model_extra or {}) for c in chunks[1:])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_rag_chat_route_with_filter_and_streaming(srv):
    auth = {"authorization": f"Bearer {KEY}"}
    only = {"must": [{"key": "source", "match": {"value": f"{CORPUS}/vector.md"}}]}
    status, body = srv.post_json("/v1/rag/chat", {
        "messages": [{"role": "user", "content": REGISTRY_Q}], "max_tokens": 8,
        "retrieval": {"collection": "docs", "top_k": 2, "filter": only}}, auth)
    assert status == 200, body
    assert body["object"] == "chat.completion"
    assert [c["source"] for c in body["citations"]] == [f"{CORPUS}/vector.md"] * 2
    status, body = srv.post_json("/v1/rag/chat", {
        "messages": [{"role": "user", "content": REGISTRY_Q}], "max_tokens": 8,
        "retrieval": {"collection": "docs", "score_threshold": 0.99}}, auth)
    assert status == 200 and body["citations"] == []
    status, _, raw = http("POST", srv.base + "/v1/rag/chat", json.dumps({
        "messages": [{"role": "user", "content": REGISTRY_Q}], "max_tokens": 8, "stream": True,
        "retrieval": {"collection": "docs", "top_k": 1}}).encode(),
        {"content-type": "application/json", **auth})
    events = [json.loads(l[6:]) for l in raw.decode().splitlines()
              if l.startswith("data: ") and l != "data: [DONE]"]
    assert status == 200 and events[0]["citations"][0]["source"] == f"{CORPUS}/registry.md"


def test_retrieval_errors_are_clear_400s_and_keys_are_checked(srv):
    c = client(srv)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "q"}],
                                  extra_body={"retrieval": {"collection": "nope"}})
    assert "does not exist" in str(e.value) and "hangar ingest" in str(e.value)
    auth = {"authorization": f"Bearer {KEY}"}
    for retrieval, words in [({"collection": "docs", "top_k": 0}, "top_k"),
                             ({"collection": "docs", "filter": {"must": 3}}, "filter"),
                             ({"collection": "docs", "k": 3}, "unknown field")]:
        status, body = srv.post_json("/v1/rag/chat", {"messages": [{"role": "user", "content": "q"}],
                                                      "retrieval": retrieval}, auth)
        assert status == 400 and words in body["error"]["message"], body
        assert body["error"]["param"] == "retrieval"
    status, body = srv.post_json("/v1/rag/chat", {"messages": [{"role": "user", "content": "q"}]}, auth)
    assert status == 400 and "needs" in body["error"]["message"]
    status, _ = srv.post_json("/v1/rag/chat", {"messages": [{"role": "user", "content": "q"}],
                                               "retrieval": {"collection": "docs"}})
    assert status == 401


def test_cli_rag_through_the_endpoint(srv, home):
    out = json.loads(hangar(home, "rag", REGISTRY_Q, "--collection", "docs", "--endpoint", srv.base,
                            "--api-key", KEY, "--top-k", "2", "-n", "8", "--json"))
    assert [c["source"] for c in out["citations"]][0] == f"{CORPUS}/registry.md"


def test_without_an_embedding_model_retrieval_is_a_400(server):
    status, body = server.post_json("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "q"}], "max_tokens": 4,
        "retrieval": {"collection": "docs"}})
    assert status == 400, body
    msg = body["error"]["message"]
    assert "embedding model" in msg or "vector database" in msg, msg
