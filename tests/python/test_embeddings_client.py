"""Embeddings over a live `hangar serve --no-model --embedding-model DIR`: the official
`openai` client (float and base64) on /v1/embeddings, plain HTTP on TEI's /embed, and
the vectors against sentence-transformers' reference
(crates/engine/tests/data/minilm_reference.json). The model folder is `$HANGAR_EMBEDDER`
or the cache `hangar pull embedder` fills; missing: skipped, or failed under
HANGAR_REQUIRE_MODEL=1."""
import json
import math
import os
from pathlib import Path

import numpy as np
import openai
import pytest

from conftest import ROOT, Server, http, unavailable

NAME = "all-minilm-l6-v2"


def embedder_dir() -> str:
    p = os.environ.get("HANGAR_EMBEDDER")
    dirs = [p] if p else [
        os.environ.get("HANGAR_MODEL_DIR") and os.path.join(os.environ["HANGAR_MODEL_DIR"], NAME),
        os.environ.get("XDG_CACHE_HOME") and os.path.join(os.environ["XDG_CACHE_HOME"], "hangar", "models", NAME),
        os.environ.get("HOME") and os.path.join(os.environ["HOME"], ".cache", "hangar", "models", NAME),
    ]
    for d in dirs:
        if d and (Path(d) / "config.json").is_file():
            return d
    unavailable("MODEL", f"the embedding model is not in {dirs}; run `hangar pull embedder` or set HANGAR_EMBEDDER")


@pytest.fixture(scope="module")
def srv():
    d = embedder_dir()
    s = Server("--no-model", "--embedding-model", d, "--threads", "2", "--no-registry-api", with_model=False)
    s.model = Path(d).resolve().name
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference():
    r = json.loads((ROOT / "crates/engine/tests/data/minilm_reference.json").read_text())
    return dict(zip(r["texts"], r["vectors"]))


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


TEXTS = ["Hello, world!", "我爱北京天安门。今天天气很好！", "Café crème brûlée à la carte — naïve façade, coöperate, Ångström, Øresund."]


def test_openai_client_float_and_base64_match_sentence_transformers(srv, reference):
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused")
    f = client.embeddings.create(model=srv.model, input=TEXTS, encoding_format="float")
    assert [d.index for d in f.data] == [0, 1, 2]
    assert f.model == srv.model
    assert all(len(d.embedding) == 384 for d in f.data)
    assert f.usage.prompt_tokens == f.usage.total_tokens > len(TEXTS) * 2
    for t, d in zip(TEXTS, f.data):
        assert cosine(d.embedding, reference[t]) >= 0.9999, t
        assert abs(math.fsum(x * x for x in d.embedding) - 1.0) < 1e-4
    # The client asks for base64 when no format is given and decodes it itself.
    b = client.embeddings.create(model=srv.model, input=TEXTS)
    for x, y in zip(f.data, b.data):
        # JSON floats are f32 printed shortest; base64 carries the f32 bits: same f32s.
        assert np.array_equal(np.float32(x.embedding), np.float32(y.embedding))
    one = client.embeddings.create(model=srv.model, input=TEXTS[0], encoding_format="float")
    assert one.data[0].embedding == f.data[0].embedding, "batching does not change a vector"


def test_openai_client_errors_are_4xx(srv):
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model=srv.model, input="x", dimensions=128)
    with pytest.raises(openai.BadRequestError, match="at most 256"):
        client.embeddings.create(model=srv.model, input="word " * 400)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    ok = client.embeddings.create(model=srv.model, input="word " * 400, extra_body={"truncate": True})
    assert ok.usage.prompt_tokens == 256
    ids = client.embeddings.create(model=srv.model, input=[[101, 7592, 102]], encoding_format="float")
    assert len(ids.data[0].embedding) == 384


def test_models_lists_the_embedding_model(srv):
    status, _, body = http("GET", srv.base + "/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == [srv.model]


def test_tei_embed(srv, reference):
    status, v = srv.post_json("/embed", {"inputs": TEXTS[0]})
    assert status == 200, v
    assert len(v) == 1 and cosine(v[0], reference[TEXTS[0]]) >= 0.9999
    status, raw = srv.post_json("/embed", {"inputs": TEXTS, "normalize": False})
    assert status == 200 and len(raw) == 3
    assert abs(np.linalg.norm(raw[0]) - 1.0) > 1e-3
    assert cosine(raw[0], v[0]) > 0.99999
    status, body = srv.post_json("/embed", {"inputs": "word " * 400})
    assert status == 413 and body["error_type"] == "Validation", body
    status, body = srv.post_json("/embed", {"inputs": "word " * 400, "truncate": True})
    assert status == 200, body
    status, body = srv.post_json("/embed", {"input": "wrong field"})
    assert status in (400, 422), body
