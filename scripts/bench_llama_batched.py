#!/usr/bin/env python3
"""Anchor for the serving benchmark: llama.cpp's own multi-sequence decode, the loop
`llama-server -np N` runs, driven through llama-cpp-python's low-level API (no HTTP,
no detokenization, so it is an upper bound for llama-server on the same machine).

For each N: N distinct prompts are prefilled in one llama_decode call, then N tokens
(one per sequence) are decoded per llama_decode call for --max-tokens steps, greedy,
end-of-generation banned. Reports aggregate generated tok/s (prefill included, like a
server's wall clock) and the time until every sequence has its first token.

    /work/llama-venv/bin/python scripts/bench_llama_batched.py MODEL.gguf --streams 1,4,8,16
"""

import argparse
import ctypes
import json
import time

import llama_cpp as L
import numpy as np

from bench_serve import prompt_for


def tokenize(vocab, text):
    buf = (L.llama_token * 4096)()
    n = L.llama_tokenize(vocab, text.encode(), len(text.encode()), buf, 4096, True, False)
    return list(buf[:n])


def run(model, vocab, n_vocab, streams, max_tokens, threads, words, ban):
    cp = L.llama_context_default_params()
    cp.n_ctx = streams * (max_tokens + 96)
    cp.n_batch = max(512, streams * 64)
    cp.n_ubatch = 512
    cp.n_seq_max = streams
    cp.kv_unified = True  # as llama-server -np N does
    cp.n_threads = threads
    cp.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(cp.n_batch, 0, 1)
    prompts = [tokenize(vocab, prompt_for(i, words, 1)) for i in range(streams)]

    def submit(items):
        # items: (token, pos, seq, want_logits)
        batch.n_tokens = len(items)
        for i, (t, p, s, lg) in enumerate(items):
            batch.token[i] = t
            batch.pos[i] = p
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = s
            batch.logits[i] = lg
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def argmax(i):
        row = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy()
        row[ban] = -np.inf
        return int(row.argmax())

    t0 = time.perf_counter()
    items = []
    for s, p in enumerate(prompts):
        items += [(t, k, s, k == len(p) - 1) for k, t in enumerate(p)]
    submit(items)
    last_rows = [i for i, it in enumerate(items) if it[3]]
    nxt = [argmax(r) for r in last_rows]
    ttft = time.perf_counter() - t0
    pos = [len(p) for p in prompts]
    generated = streams
    for _ in range(max_tokens - 1):
        submit([(nxt[s], pos[s], s, True) for s in range(streams)])
        nxt = [argmax(s) for s in range(streams)]
        pos = [p + 1 for p in pos]
        generated += streams
    wall = time.perf_counter() - t0
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    return {"streams": streams, "generated_tokens": generated, "wall_s": round(wall, 3),
            "aggregate_tok_s": round(generated / wall, 2), "all_first_tokens_s": round(ttft, 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-words", type=int, default=24)
    ap.add_argument("--ban", default="1,106")
    ap.add_argument("--json")
    a = ap.parse_args()
    L.llama_backend_init()
    model = L.llama_model_load_from_file(a.model.encode(), L.llama_model_default_params())
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    ban = [int(x) for x in a.ban.split(",") if x.strip()]
    run(model, vocab, n_vocab, 1, 4, a.threads, a.prompt_words, ban)  # warm-up
    out = []
    for s in [int(x) for x in a.streams.split(",")]:
        r = run(model, vocab, n_vocab, s, a.max_tokens, a.threads, a.prompt_words, ban)
        out.append(r)
        print(f"llama.cpp batched streams={s:3d} aggregate={r['aggregate_tok_s']:8.1f} tok/s "
              f"all-first-tokens={r['all_first_tokens_s']*1000:7.0f} ms", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"label": "llama.cpp batched (llama-cpp-python low-level)", "levels": out}, f, indent=1)


if __name__ == "__main__":
    main()
