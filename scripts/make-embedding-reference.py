#!/usr/bin/env python3
"""Generates the committed references for Hangar's embeddings (run once, by hand).

  python3 -m venv target/pyenv && target/pyenv/bin/pip install torch sentence-transformers tokenizers
  target/pyenv/bin/python scripts/make-embedding-reference.py MODEL_DIR

MODEL_DIR is the all-MiniLM-L6-v2 folder (`hangar pull embedder` caches it in
~/.cache/hangar/models/all-minilm-l6-v2). Writes:
  crates/tokenizer/tests/data/wordpiece_reference.json  token ids from the `tokenizers`
      library (no truncation, no padding, [CLS]/[SEP] added) for varied texts
  crates/engine/tests/data/minilm_reference.json        sentence-transformers vectors
      (7 significant digits) for the same texts, truncated at the model's 256 tokens
CI only reads these files.
"""
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HAND = [
    "",
    " ",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Café crème brûlée à la carte — naïve façade, coöperate, Ångström, Øresund.",
    "ÉCOLE NORMALE SUPÉRIEURE; Zürich; São Paulo; Kraków; İstanbul; Ελληνικά κείμενα.",
    "我爱北京天安门。今天天气很好！",
    "日本語のテキストです。カタカナとひらがな、漢字。",
    "한국어 문장도 있습니다. 서울은 크다.",
    "Mixed 中文 and English 文本 together.",
    "Rare CJK ext B: 𠀀𠀁 ext C/D edge: 𫠠𫠟 𬺰 compat: 豈 更",
    "Emoji time 😀🎉👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵 heart ❤️",
    "Tabs\tand\nnewlines\r\nand   multiple    spaces",
    "Control\x00chars\x01here\x7f and \ufffd replacement",
    "Unassigned a\u0378b private a\ue000b new emoji a\U0001FAE0b CJK-D edge a\U0002B81Fb a\U0002B820b end\U0010FFFE",
    "Zero\u200bwidth\u200djoiner and soft\u00adhyphen and BOM\ufeffmark",
    "Combining: e\u0301 a\u0300 n\u0303 o\u0308 vs precomposed é à ñ ö",
    "Punctuation!!! ??? ... ,,, ;;; ::: --- ___ ((( ))) [[[ ]]] {{{ }}}",
    "Symbols $100 + 50% = <tag> ^caret^ `tick` |pipe| ~tilde~ @at #hash &amp *star",
    "Unicode punctuation: «quotes» „low“ ‘single’ — en–dash … ¿qué? ¡sí! 「括弧」",
    "Numbers 3.14159 2,718 1e-10 0x1F 1/2 ½ ² ³ ①②③ ٣٤٥",
    "URL https://example.com/path?query=1&b=2#frag and email me@example.org",
    "def f(x): return x**2 + 1  # python code with_underscores",
    "fn main() { println!(\"{}\", vec![1, 2, 3].iter().sum::<i32>()); }",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "[CLS] special [SEP] tokens [MASK] in [PAD] the [UNK] text",
    "[cls] lowercase lookalikes [sep] [mask]",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101,
    "x" * 250,
    "Pneumonoultramicroscopicsilicovolcanoconiosis is a long word.",
    "العربية نص باللغة العربية مع أرقام ١٢٣",
    "עברית טקסט בעברית",
    "हिन्दी में लिखा गया वाक्य।",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Русский текст с буквой ё и Ё.",
    "Tiếng Việt có nhiều dấu: Người Việt Nam.",
    "Fullwidth ＡＢＣ １２３ ｈｅｌｌｏ and halfwidth ｶﾀｶﾅ",
    "Ligatures ﬁ ﬂ ﬀ and roman numeral Ⅻ and ℌ𝔢𝔩𝔩𝔬 math letters",
    "German ß and Straße; Turkish dotless ı and İ; Greek final ς",
    "ALL CAPS SENTENCE SHOULD BE LOWERCASED BY THE NORMALIZER",
    "i'm can't won't shouldn't y'all o'clock rock'n'roll",
    "e-mail co-operate state-of-the-art well-known",
    "🙂",
    "   leading and trailing spaces   ",
    "\n\n\n",
    "Q: What is the capital of France? A: Paris.",
    "query: how much protein should a female eat",
    "passage: As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per day.",
    "Represent this sentence for searching relevant passages: what is a vector database?",
]

SUBJECTS = ["The cat", "A scientist", "My neighbour", "The committee", "Our team", "The old river",
            "A small robot", "The government", "Every student", "The new café"]
VERBS = ["discovered", "ignored", "painted", "explained", "measured", "celebrated", "rejected",
         "translated", "questioned", "described"]
OBJECTS = ["a hidden treasure", "the quarterly report", "the sunset over the bay", "quantum entanglement",
           "an unusual recipe", "the history of Rome", "the broken bicycle", "a difficult equation",
           "the museum's collection", "the migration of birds"]
TAILS = ["yesterday.", "with great enthusiasm!", "before the storm arrived.", "in under five minutes.",
         "without telling anyone.", "— surprisingly well.", "for the third time?", "at 3:45 p.m.",
         "(again).", "despite the noise."]
EXTRA = ["naïve", "résumé", "東京", "😀", "42", "U.S.A.", "C++", "über", "ñandú", "Ωmega", "x²", "…"]


def generated(n):
    rng = random.Random(12)
    out = []
    for i in range(n):
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(TAILS)]
        if i % 3 == 0:
            words.insert(rng.randrange(1, 4), rng.choice(EXTRA))
        s = " ".join(words)
        if i % 7 == 0:
            s = s.upper()
        if i % 11 == 0:
            s = " ".join([s] * rng.randrange(2, 6))
        out.append(s)
    return out


def long_texts():
    base = "This paragraph is deliberately long so that it exceeds the model's limit of 256 tokens. "
    return [base * 30, ("Données très longues, éèêë. " * 80), ("長い日本語の文章。" * 120)]


def texts():
    return HAND + generated(160) + long_texts()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    model_dir = Path(sys.argv[1])
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    all_texts = texts()
    ref = [{"text": t, "ids": tok.encode(t).ids} for t in all_texts]
    out = ROOT / "crates/tokenizer/tests/data/wordpiece_reference.json"
    out.write_text(json.dumps(ref, ensure_ascii=False, indent=0) + "\n")
    print(f"{out}: {len(ref)} texts, longest {max(len(r['ids']) for r in ref)} ids")

    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(model_dir), device="cpu")
    vecs = model.encode(all_texts, batch_size=16, convert_to_numpy=True)
    emb = {
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": model.max_seq_length,
        "normalized": True,
        "texts": all_texts,
        "vectors": [[float(f"{v:.7g}") for v in row] for row in vecs.tolist()],
    }
    out = ROOT / "crates/engine/tests/data/minilm_reference.json"
    out.write_text(json.dumps(emb, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{out}: {len(all_texts)} vectors of {vecs.shape[1]}")


if __name__ == "__main__":
    main()
