#!/usr/bin/env python3
"""Writes the committed seed corpus of every fuzz target into fuzz/corpus/<target>/.

Seeds are small valid inputs (plus a few near-misses) that reach deep into each
parser; libFuzzer mutates from there. Re-run after changing a format; the output is
deterministic. Pickles come from this interpreter's own `pickle` module.
"""
import json
import os
import pickle
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- GGUF -------------------------------------------------------------------------
U32, I32, F32, BOOL, STR, ARR, U64 = 4, 5, 6, 7, 8, 9, 10


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(ty, v):
    if ty == U32:
        return struct.pack("<I", v)
    if ty == I32:
        return struct.pack("<i", v)
    if ty == F32:
        return struct.pack("<f", v)
    if ty == BOOL:
        return struct.pack("<B", v)
    if ty == STR:
        return gstr(v)
    if ty == U64:
        return struct.pack("<Q", v)
    et, items = v
    return struct.pack("<IQ", et, len(items)) + b"".join(gval(et, x) for x in items)


def gguf(meta, tensors, align=32):
    """meta: [(key, type, value)]; tensors: [(name, dims, f32 values)]."""
    b = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for k, ty, v in meta:
        b += gstr(k) + struct.pack("<I", ty) + gval(ty, v)
    off, datas = 0, []
    for name, dims, vals in tensors:
        b += gstr(name) + struct.pack("<I", len(dims))
        b += b"".join(struct.pack("<Q", d) for d in dims)
        b += struct.pack("<IQ", 0, off)
        data = struct.pack("<%df" % len(vals), *vals)
        datas.append(data)
        off += (len(data) + align - 1) // align * align
    b += b"\0" * (-len(b) % align)
    for data in datas:
        b += data + b"\0" * (-len(data) % align)
    return b


def model(arch, tokenizer_meta, d=8, heads=2, kv=1, hd=4, ff=8, layers=2, vocab=12, gemma=False):
    meta = [("general.architecture", STR, arch)]
    for k, v in [("block_count", layers), ("embedding_length", d), ("feed_forward_length", ff),
                 ("attention.head_count", heads), ("attention.head_count_kv", kv),
                 ("attention.key_length", hd), ("attention.value_length", hd),
                 ("context_length", 64)]:
        meta.append((f"{arch}.{k}", U32, v))
    meta.append((f"{arch}.rope.freq_base", F32, 10000.0))
    meta.append((f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-6))
    if gemma:
        meta.append((f"{arch}.attention.sliding_window", U32, 4))
        meta.append((f"{arch}.final_logit_softcapping", F32, 30.0))
    meta += tokenizer_meta
    ones = lambda n: [1.0] * n
    ramp = lambda n: [((i * 37) % 17 - 8) / 16 for i in range(n)]
    t = [("token_embd.weight", [d, vocab], ramp(d * vocab)), ("output_norm.weight", [d], ones(d))]
    for l in range(layers):
        n = lambda s: f"blk.{l}.{s}.weight"
        t += [(n("attn_norm"), [d], ones(d)), (n("ffn_norm"), [d], ones(d)),
              (n("attn_q"), [d, heads * hd], ramp(d * heads * hd)),
              (n("attn_k"), [d, kv * hd], ramp(d * kv * hd)),
              (n("attn_v"), [d, kv * hd], ramp(d * kv * hd)),
              (n("attn_output"), [heads * hd, d], ramp(heads * hd * d)),
              (n("ffn_gate"), [d, ff], ramp(d * ff)), (n("ffn_up"), [d, ff], ramp(d * ff)),
              (n("ffn_down"), [ff, d], ramp(ff * d))]
        if gemma:
            t += [(n("attn_q_norm"), [hd], ones(hd)), (n("attn_k_norm"), [hd], ones(hd)),
                  (n("post_attention_norm"), [d], ones(d)), (n("post_ffw_norm"), [d], ones(d))]
    return gguf(meta, t)


spm_tokens = ["<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>", "▁", "▁the", "h",
              "e", "he", "<0x0A>", "<0x41>"]
spm = [("tokenizer.ggml.model", STR, "llama"),
       ("tokenizer.ggml.tokens", ARR, (STR, spm_tokens)),
       ("tokenizer.ggml.scores", ARR, (F32, [-float(i) for i in range(len(spm_tokens))])),
       ("tokenizer.ggml.token_type", ARR, (I32, [2, 3, 3, 3, 3, 1, 1, 1, 1, 1, 6, 6])),
       ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
       ("tokenizer.ggml.add_bos_token", BOOL, 1)]
bpe_tokens = ["t", "h", "e", "Ġ", "th", "the", "Ġthe", "Ċ", "<|im_start|>", "<|im_end|>", "a", "b"]
bpe = [("tokenizer.ggml.model", STR, "gpt2"), ("tokenizer.ggml.pre", STR, "qwen2"),
       ("tokenizer.ggml.tokens", ARR, (STR, bpe_tokens)),
       ("tokenizer.ggml.merges", ARR, (STR, ["t h", "th e", "Ġ the"])),
       ("tokenizer.ggml.token_type", ARR, (I32, [1] * 8 + [3, 3, 1, 1])),
       ("tokenizer.ggml.eos_token_id", U32, 9)]

put("gguf", "gemma3-spm", model("gemma3", spm, gemma=True))
put("gguf", "qwen2-bpe", model("qwen2", bpe))
put("gguf", "llama-no-tokenizer", model("llama", [], layers=1))
put("gguf", "tiny", gguf([("general.architecture", STR, "llama"),
                          ("tokenizer.ggml.scores", ARR, (F32, [1.5, -2.0]))],
                         [("w", [4, 2], [float(i) for i in range(8)])]))
put("gguf", "header-only", b"GGUF" + struct.pack("<IQQ", 3, 0, 0))

# ---- safetensors ------------------------------------------------------------------


def st(header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


put("safetensors", "two-tensors", st(
    {"__metadata__": {"format": "pt"},
     "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
     "b": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]}},
    struct.pack("<4f", 1, 2, 3, 4) + b"\x80\x3f" * 4))
put("safetensors", "empty", st({}, b""))
put("safetensors", "bad-offsets", st(
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8))
put("safetensors", "config-json", b'{"model_type": "llama", "hidden_size": 8}')

# ---- pickle -----------------------------------------------------------------------


class Call:
    def __reduce__(self):
        return (os.system, ("true",))


for p in range(6):
    put("pickle", f"data-p{p}", pickle.dumps({"a": [1, 2.5, "x", None, (True, b"b")]}, protocol=p))
    put("pickle", f"call-p{p}", pickle.dumps(Call(), protocol=p))
put("pickle", "text", "N.B. a README that starts like a pickle.\n")
put("pickle", "json", '{"hidden_size": 640}')

# ---- tokenizers -------------------------------------------------------------------
texts = {
    "english": "Hello world, the thin one.\n\nThe end.",
    "mixed": "  leading spaces\ttabs 123 1234 é 日本語 emoji 🙂 ▁ <0x41>",
    "specials": "<start_of_turn>user\nHi<end_of_turn>\n<s></s><tool><|endoftext|>",
    "code": "fn main() {\n    println!(\"{}\", 12 + 3);\n}\n",
    "empty": "",
}
for target in ("tokenizer_spm", "tokenizer_bpe"):
    for name, text in texts.items():
        put(target, name, text)

# ---- chat templates ---------------------------------------------------------------
gemma_src = open(os.path.join(os.path.dirname(__file__), "..", "crates", "engine", "src",
                              "chat.rs"), encoding="utf-8").read()
start = gemma_src.index('GEMMA_TEMPLATE: &str = r#"') + len('GEMMA_TEMPLATE: &str = r#"')
gemma_template = gemma_src[start:gemma_src.index('"#;', start)]
put("chat_template", "gemma-source", b"\x02" + gemma_template.encode())
put("chat_template", "loops-and-filters", b"\x02" + (
    "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}"
    "{% endif %}{{ m.role | upper }}: {{ m.content | trim | tojson }}{{ loop.index }}"
    "{% endfor %}{% if add_generation_prompt %}{{ bos_token ~ eos_token }}{% endif %}"
    "{{ messages | length }}{{ range(3) | join(',') }}{{ 'x'.startswith('x') }}").encode())
put("chat_template", "messages", b"\x03system\0Be brief.\0user\0Hi <end_of_turn>\0assistant\0Yes.")
put("chat_template", "one-message", b"\x01user\0")

# ---- HTTP bodies ------------------------------------------------------------------
bodies = {
    "chat": {"model": "gemma3-270m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "n": 2, "stream": True,
        "stream_options": {"include_usage": True}, "stop": ["\n"], "seed": 7,
        "logprobs": True, "top_logprobs": 2},
    "completion": {"model": "m", "prompt": [[1, 2, 3], "text"], "max_tokens": 4,
                   "best_of": 2, "logprobs": 1, "echo": True, "stop": "x"},
    "kserve": {"id": "1", "parameters": {"max_tokens": 4}, "inputs": [
        {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["Hi"]},
        {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, 2],
         "parameters": {"binary_data_size": 8}}],
        "outputs": [{"name": "text_output", "parameters": {"binary_data": False}}]},
}
for name, body in bodies.items():
    put("http_bodies", name, json.dumps(body))
put("http_bodies", "deep", "[" * 200 + "]" * 200)
print("seeds written to", ROOT, file=sys.stderr)
