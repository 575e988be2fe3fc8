"""Greedy continuations by llama.cpp (llama-cpp-python) for prompts given as token ids.

usage: python llama_greedy.py MODEL.gguf PROMPTS.json N  ->  JSON list of id lists on stdout
"""
import json
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama


def main():
    model, prompts, n = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
    llm = Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=2, verbose=False)
    out = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        got = []
        for _ in range(n):
            ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            tok = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))))
            got.append(tok)
            llm.eval([tok])
        out.append(got)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
