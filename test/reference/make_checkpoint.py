#!/usr/bin/env python3
"""Write small random DeepSeek checkpoints in the Hugging Face layout (numpy only).

Usage:
  python3 test/reference/make_checkpoint.py --kind v3-bf16-sharded|v3-fp8|v2-lite \
      --out DIR [--seed N] [--attention-bias]

Kinds (shapes chosen to differ from the engine team's own generator and to hit
awkward cases: partial 128x128 FP8 blocks, group-limited routing that really
limits, yarn with mscale != mscale_all_dim, weights split across shards):

  v3-bf16-sharded  deepseek_v3, BF16 weights in 4 shards + index (neighbouring
                   tensors always in different shards), q_lora on, yarn rope,
                   sigmoid noaux_tc routing with 4 groups / keep 2, MTP layer.
  v3-fp8           deepseek_v3, linear weights FP8 e4m3 with float32
                   `_scale_inv` per 128x128 block (hidden 160: partial blocks),
                   each `_scale_inv` in a different shard from its weight,
                   plain rope, 3 groups / keep 2, MTP layer.
  v2-lite          deepseek_v2, single model.safetensors, q_lora_rank null,
                   softmax greedy routing, n_group 1, norm_topk_prob false,
                   routed_scaling_factor 1.5, 2 shared experts, no MTP, yarn
                   with mscale == mscale_all_dim, norms stored as F32.

No tokenizer files are written: the --prompt-ids contract does not need one.
Existing model*.safetensors / index files in DIR are replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from typing import Any

import numpy as np

EOS_ID = 1
BOS_ID = 0


# ---------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------


def bf16_encode(a: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bits (uint16), round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_decode(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _e4m3_positive_values() -> np.ndarray:
    """Values of codes 0..126 (the finite non-negative e4m3fn numbers), ascending."""
    codes = np.arange(127)
    exponent = codes >> 3
    mantissa = (codes & 7).astype(np.float64)
    return np.where(exponent == 0, mantissa * 2.0**-9, (1 + mantissa / 8) * np.exp2(exponent - 7.0))


E4M3_POS = _e4m3_positive_values()
E4M3_MAX = 448.0


def e4m3_encode(x: np.ndarray) -> np.ndarray:
    """float64 -> e4m3fn codes (uint8), round to nearest, ties to the even code; saturates at 448."""
    a = np.minimum(np.abs(x), E4M3_MAX)
    hi = np.clip(np.searchsorted(E4M3_POS, a, side="left"), 1, 126)
    lo = hi - 1
    d_lo = a - E4M3_POS[lo]
    d_hi = E4M3_POS[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    return code | np.where(x < 0, 0x80, 0).astype(np.uint8)


def fp8_block_quantize(w: np.ndarray, block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8[r, c], scale_inv float32[ceil(r/128), ceil(c/128)]) with scale = amax / 448."""
    rows, cols = w.shape
    br, bc = -(-rows // block), -(-cols // block)
    scales = np.zeros((br, bc), dtype=np.float32)
    codes = np.zeros((rows, cols), dtype=np.uint8)
    for i in range(br):
        for j in range(bc):
            tile = w[i * block : (i + 1) * block, j * block : (j + 1) * block]
            amax = float(np.max(np.abs(tile)))
            s = np.float32(amax / E4M3_MAX) if amax > 0 else np.float32(1.0)
            scales[i, j] = s
            codes[i * block : (i + 1) * block, j * block : (j + 1) * block] = e4m3_encode(tile / np.float64(s))
    return codes, scales


# ---------------------------------------------------------------------------
# safetensors writer
# ---------------------------------------------------------------------------


class Stored:
    """A tensor as it will be written: dtype name, shape, raw bytes."""

    def __init__(self, dtype: str, shape: tuple[int, ...], data: bytes) -> None:
        self.dtype, self.shape, self.data = dtype, shape, data


def write_safetensors(path: str, tensors: dict[str, Stored]) -> int:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(t.data)]}
        offset += len(t.data)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            f.write(tensors[name].data)
    return offset


# ---------------------------------------------------------------------------
# Model description
# ---------------------------------------------------------------------------

KINDS: dict[str, dict[str, Any]] = {
    "v3-bf16-sharded": dict(
        model_type="deepseek_v3", vocab_size=823, hidden_size=192, num_hidden_layers=3, first_k_dense_replace=1,
        num_attention_heads=6, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=24, qk_rope_head_dim=16,
        v_head_dim=20, intermediate_size=320, moe_intermediate_size=64, n_routed_experts=16, n_group=4,
        topk_group=2, num_experts_per_tok=4, n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True,
        num_nextn_predict_layers=1, rope_theta=10000.0, max_position_embeddings=1024,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "beta_fast": 32,
                      "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8},
    ),
    "v3-fp8": dict(
        model_type="deepseek_v3", vocab_size=957, hidden_size=160, num_hidden_layers=3, first_k_dense_replace=1,
        num_attention_heads=5, q_lora_rank=136, kv_lora_rank=80, qk_nope_head_dim=32, qk_rope_head_dim=16,
        v_head_dim=24, intermediate_size=272, moe_intermediate_size=48, n_routed_experts=12, n_group=3,
        topk_group=2, num_experts_per_tok=3, n_shared_experts=1, routed_scaling_factor=1.8, norm_topk_prob=True,
        num_nextn_predict_layers=1, rope_theta=50000.0, max_position_embeddings=2048, rope_scaling=None,
    ),
    "v2-lite": dict(
        model_type="deepseek_v2", vocab_size=731, hidden_size=144, num_hidden_layers=3, first_k_dense_replace=1,
        num_attention_heads=4, q_lora_rank=None, kv_lora_rank=48, qk_nope_head_dim=32, qk_rope_head_dim=8,
        v_head_dim=32, intermediate_size=288, moe_intermediate_size=40, n_routed_experts=10, n_group=1,
        topk_group=1, num_experts_per_tok=3, n_shared_experts=2, routed_scaling_factor=1.5, norm_topk_prob=False,
        num_nextn_predict_layers=0, rope_theta=10000.0, max_position_embeddings=1024,
        rope_scaling={"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 128, "beta_fast": 32,
                      "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    ),
}


def build_config(kind: str, attention_bias: bool) -> dict[str, Any]:
    k = KINDS[kind]
    v3 = k["model_type"] == "deepseek_v3"
    cfg: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM" if v3 else "DeepseekV2ForCausalLM"],
        "model_type": k["model_type"],
        "vocab_size": k["vocab_size"],
        "hidden_size": k["hidden_size"],
        "intermediate_size": k["intermediate_size"],
        "moe_intermediate_size": k["moe_intermediate_size"],
        "num_hidden_layers": k["num_hidden_layers"],
        "num_nextn_predict_layers": k["num_nextn_predict_layers"],
        "num_attention_heads": k["num_attention_heads"],
        "num_key_value_heads": k["num_attention_heads"],
        "n_shared_experts": k["n_shared_experts"],
        "n_routed_experts": k["n_routed_experts"],
        "ep_size": 1,
        "routed_scaling_factor": k["routed_scaling_factor"],
        "kv_lora_rank": k["kv_lora_rank"],
        "q_lora_rank": k["q_lora_rank"],
        "qk_rope_head_dim": k["qk_rope_head_dim"],
        "v_head_dim": k["v_head_dim"],
        "qk_nope_head_dim": k["qk_nope_head_dim"],
        "topk_method": "noaux_tc" if v3 else "greedy",
        "n_group": k["n_group"],
        "topk_group": k["topk_group"],
        "num_experts_per_tok": k["num_experts_per_tok"],
        "moe_layer_freq": 1,
        "first_k_dense_replace": k["first_k_dense_replace"],
        "norm_topk_prob": k["norm_topk_prob"],
        "scoring_func": "sigmoid" if v3 else "softmax",
        "aux_loss_alpha": 0.001,
        "seq_aux": True,
        "hidden_act": "silu",
        "max_position_embeddings": k["max_position_embeddings"],
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "use_cache": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "tie_word_embeddings": False,
        "rope_theta": k["rope_theta"],
        "rope_scaling": k["rope_scaling"],
        "attention_bias": attention_bias,
        "attention_dropout": 0.0,
        "torch_dtype": "bfloat16",
    }
    if kind == "v3-fp8":
        cfg["quantization_config"] = {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
        }
    return cfg


def make_weights(cfg: dict[str, Any], rng: np.random.Generator, attention_bias: bool) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (float64 values, role) where role is one of embed/norm/linear/gate/bias/head."""
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    nH, dn, dr, dv = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    kv, ql = cfg["kv_lora_rank"], cfg["q_lora_rank"]
    E, Im, ns = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["n_shared_experts"]
    v3 = cfg["model_type"] == "deepseek_v3"
    out: dict[str, tuple[np.ndarray, str]] = {}

    def lin(name: str, rows: int, cols: int, std: float = 0.05) -> None:
        out[name] = (rng.normal(0.0, std, (rows, cols)), "linear")

    def norm(name: str, n: int) -> None:
        out[name] = (1.0 + 0.1 * rng.normal(size=n), "norm")

    def mlp(p: str, inter: int) -> None:
        lin(p + ".gate_proj.weight", inter, H)
        lin(p + ".up_proj.weight", inter, H)
        lin(p + ".down_proj.weight", H, inter)

    def block(i: int) -> None:
        p = f"model.layers.{i}"
        norm(p + ".input_layernorm.weight", H)
        norm(p + ".post_attention_layernorm.weight", H)
        a = p + ".self_attn"
        if ql is None:
            lin(a + ".q_proj.weight", nH * (dn + dr), H, 0.08)
            if attention_bias:
                out[a + ".q_proj.bias"] = (rng.normal(0.0, 0.02, nH * (dn + dr)), "bias")
        else:
            lin(a + ".q_a_proj.weight", ql, H)
            norm(a + ".q_a_layernorm.weight", ql)
            lin(a + ".q_b_proj.weight", nH * (dn + dr), ql, 0.08)
            if attention_bias:
                out[a + ".q_a_proj.bias"] = (rng.normal(0.0, 0.02, ql), "bias")
        lin(a + ".kv_a_proj_with_mqa.weight", kv + dr, H)
        norm(a + ".kv_a_layernorm.weight", kv)
        lin(a + ".kv_b_proj.weight", nH * (dn + dv), kv, 0.08)
        lin(a + ".o_proj.weight", H, nH * dv)
        if attention_bias:
            out[a + ".kv_a_proj_with_mqa.bias"] = (rng.normal(0.0, 0.02, kv + dr), "bias")
            out[a + ".o_proj.bias"] = (rng.normal(0.0, 0.02, H), "bias")
        m = p + ".mlp"
        if i < cfg["first_k_dense_replace"]:
            mlp(m, cfg["intermediate_size"])
            return
        out[m + ".gate.weight"] = (rng.normal(0.0, 0.06 if v3 else 0.1, (E, H)), "gate")
        if v3:
            # Comparable to the spread of the sigmoid scores, so the bias really moves choices;
            # small enough that every kept expert's biased score stays > 0 (the 0.0 mask fill
            # of transformers then never competes).
            out[m + ".gate.e_score_correction_bias"] = (rng.uniform(-0.08, 0.08, E), "bias32")
        for j in range(E):
            mlp(f"{m}.experts.{j}", Im)
        mlp(m + ".shared_experts", Im * ns)

    out["model.embed_tokens.weight"] = (rng.normal(0.0, 0.5, (V, H)), "embed")
    for i in range(cfg["num_hidden_layers"]):
        block(i)
    norm("model.norm.weight", H)
    out["lm_head.weight"] = (rng.normal(0.0, 0.08, (V, H)), "head")
    for n in range(cfg["num_nextn_predict_layers"]):
        L = cfg["num_hidden_layers"] + n
        p = f"model.layers.{L}"
        # the released V3 MTP layer carries its own copy of the embedding and head
        out[p + ".embed_tokens.weight"] = (out["model.embed_tokens.weight"][0].copy(), "embed")
        norm(p + ".enorm.weight", H)
        norm(p + ".hnorm.weight", H)
        out[p + ".eh_proj.weight"] = (rng.normal(0.0, 0.05, (H, 2 * H)), "eh_proj")
        norm(p + ".shared_head.norm.weight", H)
        out[p + ".shared_head.head.weight"] = (rng.normal(0.0, 0.08, (V, H)), "head")
        block(L)
    return out


def encode(kind: str, weights: dict[str, tuple[np.ndarray, str]]) -> dict[str, Stored]:
    stored: dict[str, Stored] = {}
    for name, (values, role) in weights.items():
        shape = tuple(values.shape)
        if role == "bias32":
            stored[name] = Stored("F32", shape, values.astype("<f4").tobytes())
        elif kind == "v2-lite" and role == "norm":
            stored[name] = Stored("F32", shape, values.astype("<f4").tobytes())
        elif kind == "v3-fp8" and role == "linear":
            codes, scales = fp8_block_quantize(values)
            stored[name] = Stored("F8_E4M3", shape, codes.tobytes())
            stored[name + "_scale_inv"] = Stored("F32", tuple(scales.shape), scales.astype("<f4").tobytes())
        else:
            stored[name] = Stored("BF16", shape, bf16_encode(values).astype("<u2").tobytes())
    return stored


def assign_shards(kind: str, names: list[str]) -> dict[str, int]:
    if kind == "v2-lite":
        return {n: 0 for n in names}
    n_shards = 4
    if kind == "v3-bf16-sharded":
        # round-robin over sorted names: every tensor's sorted neighbour lives in another shard
        return {n: i % n_shards for i, n in enumerate(sorted(names))}
    weights = sorted(n for n in names if not n.endswith("_scale_inv"))
    shard = {n: i % n_shards for i, n in enumerate(weights)}
    for n in names:
        if n.endswith("_scale_inv"):
            shard[n] = (shard[n[: -len("_scale_inv")]] + 1) % n_shards  # never with its weight
    return shard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write a small random DeepSeek checkpoint (HF layout)")
    ap.add_argument("--kind", required=True, choices=sorted(KINDS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attention-bias", action="store_true", help="add q_a/q, kv_a, o_proj biases (attention_bias true)")
    args = ap.parse_args(argv)

    cfg = build_config(args.kind, args.attention_bias)
    rng = np.random.default_rng(args.seed)
    stored = encode(args.kind, make_weights(cfg, rng, args.attention_bias))

    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):
        if (f.startswith("model") and f.endswith(".safetensors")) or f == "model.safetensors.index.json":
            os.remove(os.path.join(args.out, f))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": False}, f, indent=2)
        f.write("\n")

    shard = assign_shards(args.kind, list(stored))
    n_shards = max(shard.values()) + 1
    if n_shards == 1:
        write_safetensors(os.path.join(args.out, "model.safetensors"), stored)
    else:
        total = 0
        weight_map: dict[str, str] = {}
        for s in range(n_shards):
            fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
            part = {n: t for n, t in stored.items() if shard[n] == s}
            total += write_safetensors(os.path.join(args.out, fname), part)
            weight_map.update({n: fname for n in part})
        with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
            f.write("\n")
    print(json.dumps({"kind": args.kind, "out": args.out, "tensors": len(stored), "shards": n_shards}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
