"""Convert a GGUF model to a Hugging Face safetensors repo (what vLLM on a CPU serves): run with a
Python that has torch, transformers and gguf. `python convert_gguf.py FILE.gguf OUT_DIR`.

transformers dequantizes a GGUF on load (`gguf_file=`), but a model loaded that way refuses
save_pretrained, so the weights go into a fresh model built from the same config. The GGUF
tokenizer loses `add_bos_token`, without which Gemma's output is junk: it is put back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def convert(gguf: Path, out: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.bfloat16)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(out, safe_serialization=True)
    # The GGUF's quantization travels in the config; the saved weights are plain bf16.
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.add_bos_token = True
    tokenizer.chat_template = tokenizer.chat_template or GEMMA_TEMPLATE
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
