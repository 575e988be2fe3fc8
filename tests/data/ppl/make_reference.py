#!/usr/bin/env python3
"""Perplexity of the default model on long_text.txt as llama.cpp computes it, with the
method of ../reference/README.md: non-overlapping windows of BOS + (ctx - 1) text
tokens; the negative log-likelihood of window positions ctx/2 + 1 .. ctx - 1.
(Checked: on ../reference/ppl_text.txt it gives 46.3927 over 255 tokens, the shared
reference value.)

    /path/to/python-with-llama_cpp make_reference.py MODEL.gguf long_text.txt > reference.json
"""
import json
import math
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama

model, path, ctx = sys.argv[1], sys.argv[2], 512
llm = Llama(model_path=model, n_ctx=ctx, n_batch=ctx, n_threads=2, logits_all=True, verbose=False)
toks = llm.tokenize(open(path, "rb").read(), add_bos=False)
bos = llm.token_bos()
per = ctx - 1
nll, n = 0.0, 0
for w in range(len(toks) // per):
    win = [bos] + toks[w * per:(w + 1) * per]
    llm.reset()
    llm.eval(win)
    logits = np.array(llm.scores[:len(win)], dtype=np.float64)
    for i in range(ctx // 2 + 1, len(win)):
        row = logits[i - 1]
        m = row.max()
        nll += m + math.log(np.exp(row - m).sum()) - row[win[i]]
        n += 1
json.dump({"made_with": f"llama-cpp-python {llama_cpp.__version__}", "file": path.split("/")[-1],
           "ctx": ctx, "text_tokens": len(toks), "scored_tokens": n, "ppl": math.exp(nll / n)},
          sys.stdout, indent=1)
print()
