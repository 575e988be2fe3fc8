"""LangChain's own Qdrant integration (`langchain-qdrant`'s `QdrantVectorStore`),
unmodified, against a live `hangar serve --no-model --embedding-model DIR`: the
vectors come from Hangar's /v1/embeddings through the official `openai` client and
are stored and searched through Hangar's Qdrant API. The oracle is the same LangChain
calls on `QdrantClient(":memory:")` with the same embeddings: same documents, same
order, scores within 1e-4."""
import tempfile
from pathlib import Path

import openai
import pytest
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore
from qdrant_client import QdrantClient, models

from conftest import Server
from test_embeddings_client import embedder_dir

DOCS = [
    ("The Eiffel Tower is a wrought-iron lattice tower in Paris.", "travel"),
    ("Paris is the capital and largest city of France.", "travel"),
    ("Photosynthesis turns light, water and carbon dioxide into sugar.", "biology"),
    ("Mitochondria are the powerhouse of the cell.", "biology"),
    ("A binary search halves the interval on every comparison.", "computing"),
    ("Rust guarantees memory safety without a garbage collector.", "computing"),
    ("The Nile is the longest river in Africa.", "travel"),
    ("Enzymes speed up chemical reactions in living things.", "biology"),
]


class HangarEmbeddings(Embeddings):
    """LangChain's embeddings interface over Hangar's OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, model: str):
        self.client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused")
        self.model = model

    def embed_documents(self, texts):
        r = self.client.embeddings.create(model=self.model, input=list(texts))
        return [d.embedding for d in r.data]

    def embed_query(self, text):
        return self.embed_documents([text])[0]


@pytest.fixture(scope="module")
def srv():
    d = embedder_dir()
    home = tempfile.mkdtemp(prefix="hangar-langchain-")
    s = Server("--home", home, "--no-model", "--embedding-model", d, "--threads", "2",
               "--no-registry-api", with_model=False)
    s.model = Path(d).resolve().name
    yield s
    s.stop()


def stores(srv, name):
    emb = HangarEmbeddings(srv.base, srv.model)
    texts = [t for t, _ in DOCS]
    metas = [{"topic": topic, "n": i} for i, (_, topic) in enumerate(DOCS)]
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(len(DOCS))]
    ours = QdrantVectorStore.from_texts(texts, emb, metadatas=metas, ids=ids,
                                        url=srv.base, collection_name=name, timeout=60)
    oracle = QdrantVectorStore.from_texts(texts, emb, metadatas=metas, ids=ids,
                                          location=":memory:", collection_name=name)
    return ours, oracle


def same(a, b):
    assert [d.page_content for d, _ in a] == [d.page_content for d, _ in b]
    assert [d.metadata for d, _ in a] == [d.metadata for d, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-4


def test_langchain_store_search_filter_delete_as_in_memory_qdrant(srv):
    ours, oracle = stores(srv, "lc_docs")
    for q in ["Which city is the capital of France?", "how do cells make energy",
              "memory-safe programming languages"]:
        got = ours.similarity_search_with_score(q, k=3)
        same(got, oracle.similarity_search_with_score(q, k=3))
    assert "France" in ours.similarity_search("Which city is the capital of France?", k=1)[0].page_content

    # A metadata filter in Qdrant's own filter language, as LangChain passes it through.
    only_bio = models.Filter(must=[models.FieldCondition(
        key="metadata.topic", match=models.MatchValue(value="biology"))])
    got = ours.similarity_search_with_score("the tallest tower", k=3, filter=only_bio)
    assert {d.metadata["topic"] for d, _ in got} == {"biology"}
    same(got, oracle.similarity_search_with_score("the tallest tower", k=3, filter=only_bio))

    # Maximal marginal relevance reads the vectors back (with_vectors).
    mmr = ours.max_marginal_relevance_search("Paris", k=3, fetch_k=6)
    assert [d.page_content for d in mmr] == \
        [d.page_content for d in oracle.max_marginal_relevance_search("Paris", k=3, fetch_k=6)]

    # Delete by id, then the document is gone from search and from get_by_ids.
    gone = "00000000-0000-0000-0000-000000000000"
    assert ours.delete(ids=[gone])
    oracle.delete(ids=[gone])
    q = "a lattice tower in Paris"
    same(ours.similarity_search_with_score(q, k=4), oracle.similarity_search_with_score(q, k=4))
    assert all("Eiffel" not in d.page_content for d in ours.similarity_search(q, k=8))
    assert ours.get_by_ids([gone]) == []


def test_langchain_reconnects_to_an_existing_collection(srv):
    stores(srv, "lc_again")
    emb = HangarEmbeddings(srv.base, srv.model)
    again = QdrantVectorStore.from_existing_collection(
        collection_name="lc_again", embedding=emb, url=srv.base, timeout=60)
    top = again.similarity_search("longest river", k=1)[0]
    assert "Nile" in top.page_content and top.metadata["topic"] == "travel"
    client = QdrantClient(url=srv.base, timeout=30)
    assert client.count("lc_again").count == len(DOCS)
