"""A GGUF file with Llama-2-7B's shapes and random Q8_0 weights, for bench_memory.py: does a 7B model convert and
encode on a 24 GB machine? (Outside CI: the file is 7.2 GB.)

The tokenizer is SmolLM2's (packaged:smollm2-135m; a real BPE vocabulary of 49,152 tokens, so the embedding matrix
is 49,152 x 4096 rather than Llama-2's 32,000 x 4096: 6.87B parameters instead of 6.74B). Weights are written block by
block (Q8_0: a float16 scale and 32 int8 values), so writing holds one tensor at a time.

    python benchmarks/make_synthetic_gguf.py /tmp/llama2-7b-shape.q8_0.gguf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SHAPE = {"layers": 32, "hidden": 4096, "ffn": 11008, "heads": 32, "kv_heads": 32, "context": 4096}


def tensors(vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, shape in numpy order) of every tensor of a Llama-2-7B-shaped model."""
    h, f = SHAPE["hidden"], SHAPE["ffn"]
    found = [("token_embd.weight", (vocab, h)), ("output_norm.weight", (h,)), ("output.weight", (vocab, h))]
    for i in range(SHAPE["layers"]):
        found += [(f"blk.{i}.attn_norm.weight", (h,)), (f"blk.{i}.ffn_norm.weight", (h,))]
        found += [(f"blk.{i}.attn_{p}.weight", (h, h)) for p in ("q", "k", "v", "output")]
        found += [(f"blk.{i}.ffn_gate.weight", (f, h)), (f"blk.{i}.ffn_up.weight", (f, h)), (f"blk.{i}.ffn_down.weight", (h, f))]
    return found


def q8_0_blocks(shape: tuple[int, ...], rng: np.random.Generator, std: float = 0.02) -> np.ndarray:
    """Random Q8_0 rows: each block of 32 weights is a float16 scale (std * 3 / 127, so values span +-3 std) and 32
    int8 values drawn around zero."""
    rows, cols = shape
    blocks = cols // 32
    out = np.empty((rows, blocks, 34), dtype=np.uint8)
    out[:, :, :2] = np.frombuffer(np.float16(std * 3 / 127).tobytes(), dtype=np.uint8)
    out[:, :, 2:] = np.clip(rng.normal(0, 127 / 3, size=(rows, blocks, 32)), -127, 127).astype(np.int8).view(np.uint8)
    return out.reshape(rows, blocks * 34)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from st_tp.packaged import PACKAGED

    folder, name = PACKAGED["smollm2-135m"].locate()
    source = GGUFReader(Path(folder) / name)
    vocab = len(source.fields["tokenizer.ggml.tokens"].data)
    writer = GGUFWriter(args.out, "llama")
    writer.add_name("synthetic llama-2-7b shape")
    writer.add_block_count(SHAPE["layers"])
    writer.add_context_length(SHAPE["context"])
    writer.add_embedding_length(SHAPE["hidden"])
    writer.add_feed_forward_length(SHAPE["ffn"])
    writer.add_head_count(SHAPE["heads"])
    writer.add_head_count_kv(SHAPE["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(SHAPE["hidden"] // SHAPE["heads"])
    writer.add_vocab_size(vocab)
    for key, field in source.fields.items():
        if key.startswith("tokenizer.") and key != "tokenizer.chat_template":
            kind = field.types[0]
            sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), kind, sub_type=sub)
    rng = np.random.default_rng(0)
    layout = tensors(vocab)
    for tensor_name, shape in layout:
        if len(shape) == 1:
            writer.add_tensor_info(tensor_name, shape, np.dtype(np.float32), 4 * shape[0])
        else:
            nbytes = shape[0] * shape[1] // 32 * 34
            writer.add_tensor_info(tensor_name, (shape[0], shape[1] // 32 * 34), np.dtype(np.uint8), nbytes,
                                   raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for index, (_name, shape) in enumerate(layout):
        data = np.ones(shape, dtype=np.float32) if len(shape) == 1 else q8_0_blocks(shape, rng)
        writer.write_tensor_data(data)
        print(f"\r{index + 1}/{len(layout)} tensors", end="", flush=True)
    writer.close()
    print(f"\nwrote {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
