"""What `transformers` makes of an exported folder, with none of our code importable: run as a script
in a fresh process by tests/test_hf_export.py. Reads a JSON request on stdin, prints a JSON answer."""

import json
import sys

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

request = json.load(sys.stdin)
assert "imdb_bert" not in sys.modules
folder = request["folder"]
model = AutoModelForMaskedLM.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
logits = []
with torch.no_grad():
    for ids, positions in zip(request["ids"], request["positions"]):
        logits.append(model(input_ids=torch.tensor([ids])).logits[0, positions].tolist())
fills = pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=request["top_k"])(request["probe"])
print(json.dumps({"architecture": type(model).__name__, "logits": logits,
                  "fills": [[fill["token_str"], fill["score"]] for fill in fills],
                  "token_ids": [tokenizer(text, add_special_tokens=False)["input_ids"] for text in request["texts"]]}))
