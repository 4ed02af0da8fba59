"""A tiny but complete llama GGUF with random weights: something llama-server really loads,
offloads and generates from, small enough to carry to a GPU machine (a few MB).

Its tokenizer is SentencePiece-style with byte fallback (<unk>, <s>, </s>, the 256 byte tokens,
a few words), so any prompt tokenizes. Its answers are noise: it measures offload and speed,
not quality.

    python bench/tiny_llama.py OUT.gguf [--layers 4 --dim 256]
"""

from __future__ import annotations

import argparse

import numpy as np


def write_tiny_llama(path: str, layers: int = 4, dim: int = 256, heads: int = 8, ff: int = 704,
                     ctx: int = 2048, seed: int = 0) -> str:
    import gguf

    rng = np.random.default_rng(seed)
    words = ["▁the", "▁a", "▁is", "▁of", "▁and", "▁to", "▁in", "▁it"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + words
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + \
        [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(words)
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
    vocab = len(tokens)

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-llama-random")
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(dim // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def t(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    t("token_embd.weight", vocab, dim)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t(f"blk.{i}.{name}.weight", dim, dim)
        t(f"blk.{i}.ffn_gate.weight", ff, dim)
        t(f"blk.{i}.ffn_up.weight", ff, dim)
        t(f"blk.{i}.ffn_down.weight", dim, ff)
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    t("output.weight", vocab, dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=256)
    a = ap.parse_args()
    write_tiny_llama(a.out, layers=a.layers, dim=a.dim)
