"""The official qdrant-client against `hangar serve --no-model`, with the client's own
in-process exact implementation (`QdrantClient(":memory:")`) as the oracle: the same
calls must give the same ids, order and payloads, and scores within 1e-4."""

import random
import urllib.request
import tempfile
import uuid

import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from conftest import Server, hangar_bin

DIM = 16
N = 300
CITIES = ["Paris", "London", "Berlin", "Rome", "Oslo"]


@pytest.fixture(scope="module")
def server():
    home = tempfile.mkdtemp(prefix="hangar-qdrant-")
    s = Server("--home", home, with_model=False)
    yield s
    s.stop()


def clients(server):
    return QdrantClient(url=server.base, timeout=60), QdrantClient(":memory:")


def test_root_reports_a_version_the_client_accepts(server):
    # qdrant-client reads `version` from GET / on connect and warns when it cannot
    # parse it or the versions are too far apart; it must stay quiet with us.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = QdrantClient(url=server.base, timeout=30)
    assert client.get_collections() is not None
    info = client.info()
    assert info.version.count(".") == 2
    browser = urllib.request.Request(server.base + "/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(browser) as r:  # a browser is sent to the dashboard
        assert r.geturl().endswith("/ui/")


def make_points(seed):
    rnd = random.Random(seed)
    pts = []
    for i in range(N):
        pid = i if i % 10 else str(uuid.UUID(int=rnd.getrandbits(128)))
        payload = {
            "city": CITIES[i % 5],
            "n": i,
            "price": round(rnd.uniform(0, 100), 3),
            "tags": [f"t{t}" for t in range(i % 4)],
            "geo": {"zip": 1000 + i % 20},
        }
        if i % 7 == 0:
            payload["note"] = None
        pts.append(models.PointStruct(id=pid, vector=[rnd.uniform(-1, 1) for _ in range(DIM)], payload=payload))
    return pts


FILTERS = [
    None,
    models.Filter(must=[models.FieldCondition(key="city", match=models.MatchValue(value="Oslo"))]),
    models.Filter(must=[models.FieldCondition(key="city", match=models.MatchAny(any=["Rome", "Paris"]))]),
    models.Filter(must=[models.FieldCondition(key="city", match=models.MatchExcept(**{"except": ["Rome", "Paris"]}))]),
    models.Filter(must=[models.FieldCondition(key="n", range=models.Range(gte=50, lt=60))]),
    models.Filter(must=[models.FieldCondition(key="price", range=models.Range(gt=90.0))]),
    models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="tags"))]),
    models.Filter(must=[models.IsNullCondition(is_null=models.PayloadField(key="note"))]),
    models.Filter(must=[models.HasIdCondition(has_id=[1, 2, 3, 4, 5, 250])]),
    models.Filter(must=[models.FieldCondition(key="geo.zip", match=models.MatchValue(value=1003))]),
    models.Filter(should=[models.FieldCondition(key="n", range=models.Range(lt=5)),
                          models.FieldCondition(key="tags", match=models.MatchValue(value="t2"))]),
    models.Filter(must_not=[models.FieldCondition(key="city", match=models.MatchAny(any=["Paris", "London"]))],
                  must=[models.FieldCondition(key="n", range=models.Range(lte=100))]),
    models.Filter(must=[models.FieldCondition(key="tags", values_count=models.ValuesCount(gte=3))]),
]


def same_scored(got, want, ctx):
    assert [p.id for p in got] == [p.id for p in want], ctx
    for g, w in zip(got, want):
        assert abs(g.score - w.score) < 1e-4, ctx
        assert (g.payload or {}) == (w.payload or {}), ctx


def fill(c, name, distance, points):
    if c.collection_exists(name):
        c.delete_collection(name)
    c.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=distance))
    c.upsert(name, points=points, wait=True)


@pytest.mark.parametrize("distance", [models.Distance.COSINE, models.Distance.DOT, models.Distance.EUCLID])
def test_queries_match_the_in_memory_oracle(server, distance):
    hangar, oracle = clients(server)
    name = f"oracle_{distance.value.lower()}"
    points = make_points(1)
    for c in (hangar, oracle):
        fill(c, name, distance, points)
    assert hangar.collection_exists(name)
    assert hangar.get_collection(name).points_count == N
    assert name in [c.name for c in hangar.get_collections().collections]

    rnd = random.Random(2)
    for phase in ("plain", "indexed"):
        if phase == "indexed":
            hangar.create_payload_index(name, "city", models.PayloadSchemaType.KEYWORD, wait=True)
            hangar.create_payload_index(name, "n", models.PayloadSchemaType.INTEGER, wait=True)
            assert set(hangar.get_collection(name).payload_schema) == {"city", "n"}
        for f in FILTERS:
            q = [rnd.uniform(-1, 1) for _ in range(DIM)]
            for limit in (1, 10, 40):
                args = dict(query=q, query_filter=f, limit=limit, with_payload=True)
                got = hangar.query_points(name, **args).points
                want = oracle.query_points(name, **args).points
                same_scored(got, want, (phase, f, limit))
            assert hangar.count(name, count_filter=f, exact=True).count == \
                oracle.count(name, count_filter=f, exact=True).count, f
        # offset and score threshold
        q = [rnd.uniform(-1, 1) for _ in range(DIM)]
        args = dict(query=q, limit=5, offset=3, with_payload=True)
        same_scored(hangar.query_points(name, **args).points, oracle.query_points(name, **args).points, "offset")


def test_scroll_retrieve_and_delete_match_the_oracle(server):
    hangar, oracle = clients(server)
    name = "points_ops"
    points = make_points(3)
    for c in (hangar, oracle):
        fill(c, name, models.Distance.COSINE, points)
    f = models.Filter(must=[models.FieldCondition(key="city", match=models.MatchAny(any=["Paris", "Oslo"]))])

    def pages(c):
        out, offset = [], None
        while True:
            recs, offset = c.scroll(name, scroll_filter=f, limit=17, offset=offset, with_payload=True)
            out.extend((r.id, r.payload) for r in recs)
            if offset is None:
                return out
    assert pages(hangar) == pages(oracle)

    ids = [points[i].id for i in (0, 5, 17, 123)]
    got = hangar.retrieve(name, ids=ids, with_payload=True, with_vectors=True)
    want = oracle.retrieve(name, ids=ids, with_payload=True, with_vectors=True)
    assert sorted(str(r.id) for r in got) == sorted(str(r.id) for r in want)
    by_id = {r.id: r for r in want}
    for r in got:
        assert r.payload == by_id[r.id].payload
        assert max(abs(a - b) for a, b in zip(r.vector, by_id[r.id].vector)) < 1e-5

    for c in (hangar, oracle):
        c.delete(name, points_selector=models.PointIdsList(points=ids[:2]), wait=True)
        c.delete(name, points_selector=models.FilterSelector(
            filter=models.Filter(must=[models.FieldCondition(key="n", range=models.Range(gte=200))])), wait=True)
    assert hangar.count(name, exact=True).count == oracle.count(name, exact=True).count < N
    q = [0.1] * DIM
    same_scored(hangar.query_points(name, query=q, limit=20, with_payload=True).points,
                oracle.query_points(name, query=q, limit=20, with_payload=True).points, "after delete")
    assert hangar.retrieve(name, ids=ids[:2]) == []


def test_bad_requests_get_4xx_with_qdrant_error_bodies(server):
    hangar, _ = clients(server)
    name = "errors"
    fill(hangar, name, models.Distance.DOT, make_points(4)[:10])
    with pytest.raises(UnexpectedResponse) as e:
        hangar.upsert(name, points=[models.PointStruct(id=1, vector=[1.0, 2.0])], wait=True)
    assert e.value.status_code == 400 and b"dimension" in e.value.content
    with pytest.raises(UnexpectedResponse) as e:
        hangar.query_points("no_such_collection", query=[0.0] * DIM)
    assert e.value.status_code == 404
    with pytest.raises(UnexpectedResponse) as e:
        hangar.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT))
    assert e.value.status_code == 409
    assert not hangar.collection_exists("no_such_collection")
    # A client-chosen limit far beyond the collection is served, not allocated.
    assert len(hangar.query_points(name, query=[0.0] * DIM, limit=10**12).points) == 10
    with pytest.raises(UnexpectedResponse) as e:
        hangar.scroll(name, scroll_filter=models.Filter(must=[models.FieldCondition(
            key="price", match=models.MatchValue(value="x"))]), offset="not-an-id")
    assert e.value.status_code == 400


def test_snapshots_create_list_recover_delete(server):
    hangar, _ = clients(server)
    name = "snap"
    points = make_points(5)
    fill(hangar, name, models.Distance.EUCLID, points)
    snap = hangar.create_snapshot(name, wait=True)
    assert snap.size > 0
    assert snap.name in [s.name for s in hangar.list_snapshots(name)]
    hangar.delete(name, points_selector=models.PointIdsList(points=[points[1].id, points[2].id]), wait=True)
    assert hangar.count(name).count == N - 2
    hangar.recover_snapshot(name, f"{server.base}/collections/{name}/snapshots/{snap.name}", wait=True)
    assert hangar.count(name).count == N
    # Into a fresh collection too.
    hangar.recover_snapshot("snap_copy", f"{server.base}/collections/{name}/snapshots/{snap.name}", wait=True)
    q = [0.2] * DIM
    a = hangar.query_points(name, query=q, limit=5, with_payload=True).points
    b = hangar.query_points("snap_copy", query=q, limit=5, with_payload=True).points
    same_scored(a, b, "copy")
    assert hangar.delete_snapshot(name, snap.name, wait=True)
    assert snap.name not in [s.name for s in hangar.list_snapshots(name)]


def test_api_key_is_read_from_the_api_key_header():
    home = tempfile.mkdtemp(prefix="hangar-qdrant-key-")
    s = Server("--home", home, "--api-key", "sekret", with_model=False)
    try:
        good = QdrantClient(url=s.base, api_key="sekret", timeout=30)
        good.create_collection("k", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
        assert good.collection_exists("k")
        for bad in (QdrantClient(url=s.base, timeout=30, check_compatibility=False),
                    QdrantClient(url=s.base, api_key="wrong", timeout=30, check_compatibility=False)):
            with pytest.raises(UnexpectedResponse) as e:
                bad.get_collections()
            assert e.value.status_code == 401
    finally:
        s.stop()


def test_graph_search_over_http_agrees_with_exact_search(server):
    hangar, oracle = clients(server)
    name = "graph"
    points = make_points(6)
    for c in (hangar, oracle):
        if c.collection_exists(name):
            c.delete_collection(name)
        # full_scan_threshold small: the HNSW graph answers, not the exact scan.
        c.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
                            hnsw_config=models.HnswConfigDiff(m=16, ef_construct=100, full_scan_threshold=10))
        c.upsert(name, points=points, wait=True)
    rnd = random.Random(7)
    hit = total = 0
    for _ in range(30):
        q = [rnd.uniform(-1, 1) for _ in range(DIM)]
        want = oracle.query_points(name, query=q, limit=10).points
        got = hangar.query_points(name, query=q, limit=10, search_params=models.SearchParams(hnsw_ef=64)).points
        hit += len({p.id for p in got} & {p.id for p in want})
        total += 10
        exact = hangar.query_points(name, query=q, limit=10, search_params=models.SearchParams(exact=True)).points
        same_scored(exact, want, "exact")
    assert hit / total >= 0.95, hit / total


def test_cli_create_upsert_query_snapshot(tmp_path):
    import json
    import subprocess

    def hangar(*args, stdin=None):
        out = subprocess.run([hangar_bin(), "--home", str(tmp_path), "vector", *args],
                             input=stdin, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    hangar("create", "docs", "--dim", "3", "--distance", "euclid", "--json")
    lines = "\n".join(json.dumps({"id": i, "vector": [i, 0, 0], "payload": {"even": i % 2 == 0}})
                      for i in range(20))
    assert json.loads(hangar("upsert", "docs", "--json", stdin=lines))["upserted"] == 20
    assert json.loads(hangar("list", "--json")) == ["docs"]
    assert json.loads(hangar("info", "docs", "--json"))["points_count"] == 20
    res = json.loads(hangar("query", "docs", "--vector", "[4.2, 0, 0]", "--limit", "3", "--json",
                            "--filter", json.dumps({"must": [{"key": "even", "match": {"value": True}}]})))
    assert [p["id"] for p in res["points"]] == [4, 6, 2]
    assert abs(res["points"][0]["score"] - 0.2) < 1e-5
    snap = json.loads(hangar("snapshot", "create", "docs", "--json"))
    assert [s["name"] for s in json.loads(hangar("snapshot", "list", "docs", "--json"))] == [snap["snapshot"]["name"]]
    hangar("snapshot", "restore", "copy", "--file", snap["path"])
    assert json.loads(hangar("info", "copy", "--json"))["points_count"] == 20
