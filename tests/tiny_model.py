"""A tiny llama-architecture GGUF made with gguf-py (synthetic random weights, labelled as such).

32 blocks, width 256, ffn 512, 8 heads / 2 KV heads (GQA 4), vocab 512: every row length is a
multiple of 256, so no K-quant falls back and every llama.cpp rule is visible.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_LAYERS, WIDTH, FFN, HEADS, KV_HEADS, VOCAB = 32, 256, 512, 8, 2, 512


def make_tiny_llama(path: Path, seed: int = 0) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    head_dim = WIDTH // HEADS
    writer.add_name("tiny-llama-synthetic")
    writer.add_block_count(N_LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(WIDTH)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(VOCAB)])
    writer.add_token_types([1] * VOCAB)
    writer.add_token_merges([])
    writer.add_vocab_size(VOCAB)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:  # numpy order: last ggml dimension first
        values = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        writer.add_tensor(name, values.astype(np.float16) if len(shape) > 1 else values)

    tensor("token_embd.weight", VOCAB, WIDTH)
    for i in range(N_LAYERS):
        b = f"blk.{i}."
        tensor(b + "attn_norm.weight", WIDTH)
        tensor(b + "attn_q.weight", WIDTH, WIDTH)
        tensor(b + "attn_k.weight", head_dim * KV_HEADS, WIDTH)
        tensor(b + "attn_v.weight", head_dim * KV_HEADS, WIDTH)
        tensor(b + "attn_output.weight", WIDTH, WIDTH)
        tensor(b + "ffn_norm.weight", WIDTH)
        tensor(b + "ffn_gate.weight", FFN, WIDTH)
        tensor(b + "ffn_up.weight", FFN, WIDTH)
        tensor(b + "ffn_down.weight", WIDTH, FFN)
    tensor("output_norm.weight", WIDTH)
    tensor("output.weight", VOCAB, WIDTH)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
