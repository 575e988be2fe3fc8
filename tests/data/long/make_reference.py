"""Makes long_context.json: llama.cpp's greedy continuation of prompts longer than
Gemma 3's 512-token sliding window, for the default model.

Run with a Python that has llama-cpp-python 0.3.36 (built as in
../reference/README.md):  python make_reference.py MODEL.gguf
"""
import json, sys
import numpy as np
import llama_cpp
from llama_cpp import Llama

model = sys.argv[1]
llm = Llama(model_path=model, n_ctx=2048, n_batch=2048, n_threads=2, logits_all=False, verbose=False)
text = open("../reference/ppl_text.txt").read()
cases = []
for tail in [" In summary, the main idea of this text is", "\n\nQuestion: What is the first topic mentioned above?\nAnswer:"]:
    for copies in [1, 2]:
        prompt = (text + "\n\n") * copies + tail
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        llm.reset()
        llm.eval(ids)
        out = []
        for _ in range(16):
            ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            tok = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))))
            out.append(tok)
            llm.eval([tok])
        cases.append({"copies": copies, "tail": tail, "prompt_tokens": len(ids), "prompt_ids": ids, "greedy_ids": out,
                      "text": llm.detokenize(out).decode(errors="replace")})
json.dump({"made_with": "llama-cpp-python 0.3.36, n_threads 2, n_batch 2048", "cases": cases}, open("long_context.json", "w"), indent=1)
for c in cases:
    print(c["prompt_tokens"], repr(c["text"]))
