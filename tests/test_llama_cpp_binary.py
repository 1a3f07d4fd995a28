"""A GGUF made by the gguf stage loads unchanged in llama.cpp's own binary (not only the Python
bindings) and gives the same greedy text as transformers. Needs llama-simple: build it with
scripts/build_llama_cpp_tools.sh and point TUNECHAIN_LLAMA_SIMPLE at it; skipped otherwise."""
import os
import shutil
import subprocess

import pytest
from conftest import EMBEDDED

BINARY = os.environ.get("TUNECHAIN_LLAMA_SIMPLE") or shutil.which("llama-simple")
pytestmark = pytest.mark.skipif(not BINARY, reason="no llama-simple (scripts/build_llama_cpp_tools.sh)")

PROMPTS = ["<|im_start|>user\nTom has 12 apples and buys 7 more. How many apples does he have now?<|im_end|>\n"
           "<|im_start|>assistant\n", "The number of"]


def test_llama_cpp_binary_matches_transformers_greedy(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.llama_cpp import converter

    gguf = tmp_path / "model-f32.gguf"
    converter.convert(EMBEDDED, gguf, "f32")
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED)
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED).eval()
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        done = subprocess.run([BINARY, "-m", str(gguf), "-n", "12", prompt], capture_output=True, text=True,
                              timeout=120, check=True)
        assert done.stdout.startswith(prompt)
        assert done.stdout[len(prompt):].strip() == expected.strip()
