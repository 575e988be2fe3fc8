import json, sys
from llama_cpp import Llama
prompts = [
 "The history of the Roman Empire", "In the beginning of the universe", "My favorite recipe for pancakes is",
 "The best way to learn programming is", "Photosynthesis is the process by which", "The capital of Japan is",
 "Once there was a dragon who", "To install Python on Linux, you", "The theory of relativity states that",
 "A good night's sleep helps", "The stock market crashed in", "import numpy as np\n", "SELECT name FROM users WHERE",
 "The mitochondria is", "Shakespeare wrote many plays, including", "In 2020, the world faced", "The quick brown fox",
 "Climate change is caused by", "How to make a paper airplane:", "The largest ocean on Earth is",
 "Dear hiring manager,", "Breaking news: scientists have discovered", "The recipe calls for two cups of",
 "for i in range(10):", "The French Revolution began in", "Artificial intelligence will", "My dog likes to",
 "The sun rises in the", "Here are three tips for staying healthy:", "The moon orbits the",
 "Le chat est", "El perro es", "The human heart has four", "Water is made of", "The first step in solving any problem is",
 "In a galaxy far, far away", "The password must contain", "Bananas are a good source of", "The train left the station at", "Mathematics is the study of",
]
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, logits_all=True, verbose=False)
out = []
for p in prompts:
    ids = llm.tokenize(p.encode(), add_bos=True, special=False)
    llm.reset(); llm.eval(ids)
    gen = []
    for _ in range(16):
        import numpy as np
        t = int(np.argmax(llm.scores[llm.n_tokens-1]))
        gen.append(t); llm.eval([t])
    out.append({"prompt": p, "prompt_ids": ids, "greedy_ids": gen})
json.dump({"greedy": out}, open(sys.argv[2], "w"), indent=0)
