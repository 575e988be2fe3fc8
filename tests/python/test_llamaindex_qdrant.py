"""LlamaIndex's own Qdrant integration (`llama-index-vector-stores-qdrant`), unmodified,
against a live `hangar serve --no-model`: nodes with their embeddings added, queried
with and without metadata filters, deleted by source document. The oracle is the same
calls on `QdrantClient(":memory:")`: same ids in the same order, same scores."""
import random
import tempfile

import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (FilterCondition, FilterOperator, MetadataFilter,
                                                  MetadataFilters, VectorStoreQuery)
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient

from conftest import Server

DIM = 12


@pytest.fixture(scope="module")
def server():
    home = tempfile.mkdtemp(prefix="hangar-llamaindex-")
    s = Server("--home", home, "--no-registry-api", with_model=False)
    yield s
    s.stop()


def nodes():
    r = random.Random(7)
    out = []
    for i in range(60):
        n = TextNode(text=f"passage {i}", id_=f"00000000-0000-0000-0000-{i:012d}",
                     embedding=[r.uniform(-1, 1) for _ in range(DIM)],
                     metadata={"topic": ["a", "b", "c"][i % 3], "n": i})
        n.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i % 6}")
        out.append(n)
    return out


def session(client, name):
    vs = QdrantVectorStore(client=client, collection_name=name)
    vs.add(nodes())
    r = random.Random(11)
    queries = [[r.uniform(-1, 1) for _ in range(DIM)] for _ in range(5)]
    results = []

    def ask(**kw):
        for q in queries:
            res = vs.query(VectorStoreQuery(query_embedding=q, **kw))
            results.append((res.ids, [round(s, 4) for s in res.similarities],
                            [n.get_content() for n in res.nodes]))

    ask(similarity_top_k=5)
    ask(similarity_top_k=5, filters=MetadataFilters(filters=[
        MetadataFilter(key="topic", value="b"),
        MetadataFilter(key="n", value=20, operator=FilterOperator.GT)]))
    ask(similarity_top_k=5, filters=MetadataFilters(condition=FilterCondition.OR, filters=[
        MetadataFilter(key="topic", value="a"),
        MetadataFilter(key="n", value=[1, 4, 7], operator=FilterOperator.IN)]))
    vs.delete("doc1")  # every node of one source document
    ask(similarity_top_k=8)
    return results


def test_llamaindex_store_matches_in_memory_qdrant(server):
    ours = session(QdrantClient(url=server.base, timeout=60), "li_docs")
    oracle = session(QdrantClient(":memory:"), "li_docs")
    assert ours == oracle
    # The delete removed doc1's nodes (i % 6 == 1) from every later answer.
    for ids, _, _ in ours[-5:]:
        assert len(ids) == 8
        assert all(int(i[-12:]) % 6 != 1 for i in ids)
