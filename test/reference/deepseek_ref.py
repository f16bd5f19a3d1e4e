#!/usr/bin/env python3
"""Independent float64 reference for DeepSeek-V2 / V3 checkpoints (numpy only).

The TypeScript engine is judged against this file, so it is written from the
published model code (Hugging Face transformers `modeling_deepseek_v3.py` and
`modeling_rope_utils.py`, the DeepSeek-V2 remote `modeling_deepseek.py`, vLLM's
`deepseek_mtp.py`), never from the engine. Clarity beats speed: every step is a
full recompute of the whole sequence, in float64.

Usage:
  python3 test/reference/deepseek_ref.py --model DIR --prompt-ids 0,399,332 \
      --max-tokens 16 [--top-logprobs N] [--logits] [--mtp-logits] \
      [--ignore-eos] [--diagnostics]

Prints one JSON object:
  token_ids     greedy ids (generation stops after an EOS id unless --ignore-eos)
  top_logprobs  per generated token, N [id, logprob] pairs, best first
                (log_softmax of the raw float64 logits)
  logits        (--logits) every logit at the last prompt position
  mtp_logits    (--mtp-logits) the MTP head's logits at the last prompt
                position, fed the first generated token
  diagnostics   (--diagnostics) margins that say how close a float32 engine is
                to flipping a greedy choice or an expert choice

Semantics decisions, with where they come from, are commented at each site.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from typing import Any

import numpy as np


class ReferenceError_(Exception):
    """A bad checkpoint or argument; reported as one line, exit status 2."""


# ---------------------------------------------------------------------------
# Number formats
# ---------------------------------------------------------------------------


def fp8_e4m3fn_table() -> np.ndarray:
    """Value of every e4m3fn byte, float64[256].

    e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities;
    S.1111.111 (0x7f, 0xff) is NaN; exponent 0 is subnormal, m * 2^-9.
    """
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exponent = (codes >> 3) & 0xF
    mantissa = (codes & 0x7).astype(np.float64)
    normal = (1.0 + mantissa / 8.0) * np.exp2(exponent.astype(np.float64) - 7.0)
    subnormal = mantissa * 2.0**-9
    values = sign * np.where(exponent == 0, subnormal, normal)
    values[(codes & 0x7F) == 0x7F] = np.nan
    return values


FP8_E4M3FN = fp8_e4m3fn_table()

# safetensors dtype -> (bytes per element, decoder from raw little-endian bytes to float64)
_DTYPES: dict[str, tuple[int, Any]] = {
    "F64": (8, lambda b: np.frombuffer(b, dtype="<f8").astype(np.float64)),
    "F32": (4, lambda b: np.frombuffer(b, dtype="<f4").astype(np.float64)),
    "F16": (2, lambda b: np.frombuffer(b, dtype="<f2").astype(np.float64)),
    # bfloat16 is the upper half of a float32
    "BF16": (
        2,
        lambda b: (np.frombuffer(b, dtype="<u2").astype(np.uint32) << 16)
        .view(np.float32)
        .astype(np.float64),
    ),
    "F8_E4M3": (1, lambda b: FP8_E4M3FN[np.frombuffer(b, dtype=np.uint8)]),
}


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------


class SafetensorsFile:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                raw_len = f.read(8)
                if len(raw_len) != 8:
                    raise ReferenceError_(f"{path}: shorter than the 8-byte safetensors header length")
                (header_len,) = struct.unpack("<Q", raw_len)
                file_size = os.fstat(f.fileno()).st_size
                if header_len > file_size - 8:
                    raise ReferenceError_(f"{path}: header length {header_len} exceeds the file")
                header = json.loads(f.read(header_len).decode("utf-8"))
        except OSError as e:
            raise ReferenceError_(f"{path}: {e}") from e
        header.pop("__metadata__", None)
        self.data_start = 8 + header_len
        self.entries: dict[str, dict[str, Any]] = header
        self.map = np.memmap(path, dtype=np.uint8, mode="r")
        for name, entry in header.items():
            dtype = entry.get("dtype")
            if dtype not in _DTYPES:
                continue  # only a problem if this tensor is actually read
            begin, end = entry["data_offsets"]
            n = int(np.prod(entry["shape"], dtype=np.int64))
            if end - begin != n * _DTYPES[dtype][0] or self.data_start + end > file_size:
                raise ReferenceError_(f"{path}: tensor {name}: data_offsets do not fit dtype/shape/file")

    def read(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        dtype = entry["dtype"]
        if dtype not in _DTYPES:
            raise ReferenceError_(f"{self.path}: tensor {name}: unsupported dtype {dtype}")
        begin, end = entry["data_offsets"]
        raw = bytes(self.map[self.data_start + begin : self.data_start + end])
        return _DTYPES[dtype][1](raw).reshape(entry["shape"])


class Checkpoint:
    """All tensors of a model directory, single file or sharded with an index."""

    def __init__(self, model_dir: str, block_size: tuple[int, int]) -> None:
        self.model_dir = model_dir
        self.block_size = block_size
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}  # tensor name -> file name
        index_path = os.path.join(model_dir, "model.safetensors.index.json")
        single_path = os.path.join(model_dir, "model.safetensors")
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ReferenceError_(f"{index_path}: no weight_map object")
            for name, fname in weight_map.items():
                self._open(fname)
                if name not in self.files[fname].entries:
                    raise ReferenceError_(f"{index_path}: maps {name} to {fname}, which does not hold it")
                self.where[name] = fname
        elif os.path.exists(single_path):
            self._open("model.safetensors")
            for name in self.files["model.safetensors"].entries:
                self.where[name] = "model.safetensors"
        else:
            raise ReferenceError_(f"{model_dir}: neither model.safetensors nor model.safetensors.index.json")

    def _open(self, fname: str) -> None:
        if fname not in self.files:
            self.files[fname] = SafetensorsFile(os.path.join(self.model_dir, fname))

    def has(self, name: str) -> bool:
        return name in self.where

    def raw(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise ReferenceError_(f"{self.model_dir}: missing tensor {name}")
        return self.files[self.where[name]].read(name)

    def dtype(self, name: str) -> str:
        return self.files[self.where[name]].entries[name]["dtype"]

    def get(self, name: str) -> np.ndarray:
        """float64 tensor; FP8 weights are dequantized with their 128x128 block scales."""
        w = self.raw(name)
        if self.dtype(name) != "F8_E4M3":
            return w
        scale_name = name + "_scale_inv"  # x.weight -> x.weight_scale_inv (DeepSeek-V3 release layout)
        if not self.has(scale_name):
            raise ReferenceError_(f"{self.model_dir}: FP8 tensor {name} has no {scale_name}")
        scale = self.raw(scale_name)
        if w.ndim != 2:
            raise ReferenceError_(f"{self.model_dir}: FP8 tensor {name} is not 2-D")
        br, bc = self.block_size
        rows, cols = w.shape
        want = (-(-rows // br), -(-cols // bc))  # ceil: edge blocks may be partial
        if tuple(scale.shape) != want:
            raise ReferenceError_(
                f"{self.model_dir}: {scale_name} has shape {list(scale.shape)}, expected {list(want)} "
                f"for {name} {list(w.shape)} with blocks {br}x{bc}"
            )
        full = np.repeat(np.repeat(scale, br, axis=0), bc, axis=1)[:rows, :cols]
        return w * full  # weight = fp8 value * scale_inv (DeepSeek's weight_dequant)


# ---------------------------------------------------------------------------
# Small math helpers (float64 throughout)
# ---------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # exact identity, no overflow


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x)
    return x - (m + math.log(float(np.sum(np.exp(x - m)))))


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def top_k_desc(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, best first; ties go to the lower index."""
    return np.argsort(-values, kind="stable")[:k]


def v3_select(scores: np.ndarray, bias: np.ndarray, n_group: int, topk_group: int, k: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DeepseekV3TopkRouter.get_topk_indices for one token.

    Returns (selected expert ids best first, eligible mask, group scores, masked choice).
    choice = score + bias; a group scores the sum of its top-2 choices; the best topk_group
    groups stay eligible; transformers then does scores_for_choice.masked_fill(~mask, 0.0):
    masked experts compete with the value 0.0, not -inf.
    """
    E = scores.shape[0]
    group_size = E // n_group
    choice = scores + bias
    group_scores = np.sort(choice.reshape(n_group, group_size), axis=-1)[:, -2:].sum(axis=-1)
    eligible = np.repeat(np.isin(np.arange(n_group), top_k_desc(group_scores, topk_group)), group_size)
    masked = np.where(eligible, choice, 0.0)
    return top_k_desc(masked, k), eligible, group_scores, masked


def warn(msg: str) -> None:
    print(f"deepseek_ref: warning: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------
# Rotary embedding
# ---------------------------------------------------------------------------


def rope_parameters(cfg: dict[str, Any]) -> tuple[np.ndarray, float]:
    """(inv_freq float64[d_rope/2], attention_factor) as transformers' ROPE_INIT_FUNCTIONS.

    The rotary width is qk_rope_head_dim (DeepseekV3Config sets head_dim to it).
    """
    dim = int(cfg["qk_rope_head_dim"])
    base = float(cfg.get("rope_theta", 10000.0))
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    pos_freqs = base**exponents
    rs = cfg.get("rope_scaling")
    rope_type = None if not isinstance(rs, dict) else rs.get("rope_type", rs.get("type"))
    if rope_type in (None, "default"):
        return 1.0 / pos_freqs, 1.0
    factor = float(rs["factor"])
    if rope_type == "linear":
        return 1.0 / pos_freqs / factor, 1.0
    if rope_type != "yarn":
        raise ReferenceError_(f"config.json: rope_scaling type {rope_type!r} is not supported by the reference")

    # _compute_yarn_parameters (transformers modeling_rope_utils.py).
    original_max = rs.get("original_max_position_embeddings") or cfg.get("max_position_embeddings")
    if original_max is None:
        raise ReferenceError_("config.json: yarn needs original_max_position_embeddings or max_position_embeddings")
    original_max = float(original_max)
    max_pos = cfg.get("max_position_embeddings")
    if "original_max_position_embeddings" in rs and max_pos is not None and abs(max_pos / original_max - factor) > 1e-9:
        # transformers 4.5x replaces factor by max_position_embeddings / original when the
        # original is given; the DeepSeek remote code and transformers 5 use `factor`.
        warn(f"yarn factor {factor} != max_position_embeddings/original {max_pos / original_max}; using factor")
    attention_factor = rs.get("attention_factor")
    mscale = rs.get("mscale")
    mscale_all_dim = rs.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            # The DeepSeek remote code would use get_mscale(factor, mscale or 1) / get_mscale(factor,
            # mscale_all_dim or 0) here; the two agree unless exactly one of the two keys is set.
            if bool(mscale) != bool(mscale_all_dim):
                warn("yarn: only one of mscale / mscale_all_dim is set; transformers and the remote code differ")
            attention_factor = yarn_get_mscale(factor)
    beta_fast = rs.get("beta_fast") or 32
    beta_slow = rs.get("beta_slow") or 1
    truncate = rs.get("truncate", True)

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = correction_dim(beta_fast)
    high = correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolation_weight = 1.0 - ramp
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)
    inv_freq = inv_freq_interpolation * (1.0 - extrapolation_weight) + inv_freq_extrapolation * extrapolation_weight
    return inv_freq, float(attention_factor)


def apply_rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, attention_factor: float,
               interleave: bool) -> np.ndarray:
    """Rotate x[..., T, ?, d_rope] (positions along axis 0).

    Interleaved (DeepSeek weights, rope_interleave default true): pair i is elements
    (2i, 2i+1). transformers de-interleaves and applies rotate_half, which is the same
    rotation with the output written in a permuted order; permuting q and k alike
    leaves every dot product unchanged, so this keeps the interleaved order.
    Both cos and sin carry the yarn attention_factor, as in DeepseekV3RotaryEmbedding.
    """
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, d/2]
    cos = np.cos(angles) * attention_factor
    sin = np.sin(angles) * attention_factor
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (inv_freq.shape[0],)
    cos = cos.reshape(shape)
    sin = sin.reshape(shape)
    half = inv_freq.shape[0]
    if interleave:
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., :half], x[..., half:]
    ra = a * cos - b * sin
    rb = a * sin + b * cos
    out = np.empty_like(x)
    if interleave:
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., :half], out[..., half:] = ra, rb
    return out


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def _need(cfg: dict[str, Any], key: str) -> Any:
    if cfg.get(key) is None:
        raise ReferenceError_(f"config.json: missing {key}")
    return cfg[key]


class DeepSeekReference:
    def __init__(self, model_dir: str) -> None:
        cfg_path = os.path.join(model_dir, "config.json")
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ReferenceError_(f"{cfg_path}: {e}") from e
        self.cfg = cfg
        self.model_type = cfg.get("model_type")
        if self.model_type not in ("deepseek_v3", "deepseek_v2"):
            raise ReferenceError_(f"{cfg_path}: model_type {self.model_type!r} is not deepseek_v3 / deepseek_v2")
        qc = cfg.get("quantization_config") or {}
        block = qc.get("weight_block_size") or [128, 128]
        self.ckpt = Checkpoint(model_dir, (int(block[0]), int(block[1])))

        self.hidden = int(_need(cfg, "hidden_size"))
        self.n_layers = int(_need(cfg, "num_hidden_layers"))
        self.n_heads = int(_need(cfg, "num_attention_heads"))
        self.vocab = int(_need(cfg, "vocab_size"))
        self.q_lora_rank = cfg.get("q_lora_rank")
        self.kv_lora_rank = int(_need(cfg, "kv_lora_rank"))
        self.d_nope = int(_need(cfg, "qk_nope_head_dim"))
        self.d_rope = int(_need(cfg, "qk_rope_head_dim"))
        self.d_v = int(_need(cfg, "v_head_dim"))
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.first_dense = int(cfg.get("first_k_dense_replace", 0))
        self.moe_layer_freq = int(cfg.get("moe_layer_freq", 1))
        self.n_routed = cfg.get("n_routed_experts")
        self.n_mtp = int(cfg.get("num_nextn_predict_layers", 0) or 0)
        self.interleave = bool(cfg.get("rope_interleave", True))
        self.inv_freq, self.attention_factor = rope_parameters(cfg)

        # softmax scale: qk_head_dim^-0.5, times mscale^2 when rope_scaling carries mscale_all_dim
        # (DeepseekV3Attention.__init__ / DeepseekV2Attention softmax_scale).
        self.softmax_scale = (self.d_nope + self.d_rope) ** -0.5
        rs = cfg.get("rope_scaling")
        if isinstance(rs, dict):
            mscale_all_dim = rs.get("mscale_all_dim", 0)
            if mscale_all_dim:
                m = yarn_get_mscale(float(rs["factor"]), mscale_all_dim)
                self.softmax_scale *= m * m

        self._cache: dict[str, np.ndarray] = {}
        # how close a float32 engine is to a different choice, and whether the checkpoint
        # exercises the bias / group limit at all (token-layer routings they changed)
        self.diag = {"min_route_margin": math.inf, "min_group_margin": math.inf, "masked_group_selections": 0,
                     "routings": 0, "bias_changed_routings": 0, "group_limit_changed_routings": 0}

    # -- weights ----------------------------------------------------------
    def w(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self.ckpt.get(name)
        return self._cache[name]

    def linear(self, prefix: str, x: np.ndarray) -> np.ndarray:
        y = x @ self.w(prefix + ".weight").T
        if self.ckpt.has(prefix + ".bias"):  # attention_bias: q_a_proj / q_proj, kv_a_proj_with_mqa, o_proj
            y = y + self.w(prefix + ".bias")
        return y

    def is_moe_layer(self, i: int) -> bool:
        # Remote code rule: routed experts exist, i >= first_k_dense_replace, i % moe_layer_freq == 0.
        # (transformers' DeepseekV3DecoderLayer ignores moe_layer_freq; the two agree for freq 1.)
        return self.n_routed is not None and i >= self.first_dense and i % self.moe_layer_freq == 0

    # -- attention (MLA, decompressed form) ------------------------------
    def attention(self, p: str, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        T = x.shape[0]
        H, dn, dr, dv = self.n_heads, self.d_nope, self.d_rope, self.d_v
        if self.q_lora_rank is None:
            q = self.linear(p + ".q_proj", x)
        else:
            # q_a_layernorm / kv_a_layernorm are built with the RMSNorm default eps 1e-6 in
            # transformers and the remote code, not config.rms_norm_eps.
            q = self.linear(p + ".q_b_proj", rms_norm(self.linear(p + ".q_a_proj", x), self.w(p + ".q_a_layernorm.weight"), 1e-6))
        q = q.reshape(T, H, dn + dr)  # [T, H, dn+dr]
        q_nope, q_pe = q[..., :dn], q[..., dn:]
        ckv = self.linear(p + ".kv_a_proj_with_mqa", x)  # [T, kv_lora + dr]
        c_kv, k_pe = ckv[:, : self.kv_lora_rank], ckv[:, self.kv_lora_rank :]
        kv = self.linear(p + ".kv_b_proj", rms_norm(c_kv, self.w(p + ".kv_a_layernorm.weight"), 1e-6))
        kv = kv.reshape(T, H, dn + dv)  # [T, H, dn+dv]
        k_nope, v = kv[..., :dn], kv[..., dn:]
        q_pe = apply_rope(q_pe, positions, self.inv_freq, self.attention_factor, self.interleave)  # [T, H, dr]
        k_pe = apply_rope(k_pe, positions, self.inv_freq, self.attention_factor, self.interleave)  # [T, dr], shared by heads
        scores = np.einsum("ihd,jhd->hij", q_nope, k_nope) + np.einsum("ihd,jd->hij", q_pe, k_pe)  # [H, T, T]
        scores = scores * self.softmax_scale
        causal = np.triu(np.ones((T, T), dtype=bool), k=1)
        scores = np.where(causal[None], -np.inf, scores)
        probs = softmax(scores, axis=-1)
        out = np.einsum("hij,jhd->ihd", probs, v).reshape(T, H * dv)  # heads concatenated
        return self.linear(p + ".o_proj", out)

    # -- feed-forward -----------------------------------------------------
    def mlp(self, p: str, x: np.ndarray) -> np.ndarray:
        return self.linear(p + ".down_proj", silu(self.linear(p + ".gate_proj", x)) * self.linear(p + ".up_proj", x))

    def route(self, p: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(expert ids int[T, k], weights float64[T, k]) for every token."""
        cfg = self.cfg
        E = int(self.n_routed)
        k = int(_need(cfg, "num_experts_per_tok"))
        n_group = int(cfg.get("n_group") or 1)
        topk_group = int(cfg.get("topk_group") or 1)
        norm = bool(cfg.get("norm_topk_prob", False))
        rsf = float(cfg.get("routed_scaling_factor", 1.0))
        logits = x @ self.w(p + ".gate.weight").T  # [T, E]
        T = x.shape[0]
        ids = np.zeros((T, k), dtype=np.int64)
        weights = np.zeros((T, k))
        if E % n_group != 0 or not 1 <= topk_group <= n_group or k > E:
            raise ReferenceError_(f"config.json: n_routed_experts {E}, n_group {n_group}, topk_group {topk_group}, "
                                  f"num_experts_per_tok {k} do not fit together")
        group_size = E // n_group

        if self.model_type == "deepseek_v3":
            # DeepseekV3TopkRouter (noaux_tc): sigmoid scores; the bias only chooses.
            scores = sigmoid(logits)
            bias_name = p + ".gate.e_score_correction_bias"
            bias = self.w(bias_name) if self.ckpt.has(bias_name) else np.zeros(E)
            for t in range(T):
                sel, eligible, group_scores, masked = v3_select(scores[t], bias, n_group, topk_group, k)
                if n_group > topk_group:
                    gs = np.sort(group_scores)[::-1]
                    self.diag["min_group_margin"] = min(self.diag["min_group_margin"], gs[topk_group - 1] - gs[topk_group])
                self._route_margin(masked, sel)
                if not np.all(eligible[sel]):
                    self.diag["masked_group_selections"] += 1
                    warn(f"{p}: token {t} selects an expert of a masked group (0.0 fill beats negative choices)")
                self.diag["routings"] += 1
                if set(sel) != set(v3_select(scores[t], np.zeros(E), n_group, topk_group, k)[0]):
                    self.diag["bias_changed_routings"] += 1
                if set(sel) != set(top_k_desc(scores[t] + bias, k)):
                    self.diag["group_limit_changed_routings"] += 1
                w = scores[t, sel]  # weights use the unbiased scores
                if norm:
                    w = w / (np.sum(w) + 1e-20)
                ids[t], weights[t] = sel, w * rsf  # transformers always applies routed_scaling_factor
            return ids, weights

        # DeepSeek-V2 remote MoEGate: softmax scores.
        scoring = cfg.get("scoring_func", "softmax")
        if scoring != "softmax":
            raise ReferenceError_(f"config.json: deepseek_v2 scoring_func {scoring!r} is not supported")
        scores = softmax(logits, axis=-1)
        method = cfg.get("topk_method", "greedy")
        for t in range(T):
            s = scores[t]
            if method in ("greedy", "gready"):  # "gready" is the spelling in early V2 configs
                cand = s
            elif method == "group_limited_greedy":
                group_max = s.reshape(n_group, group_size).max(axis=-1)
                kept = top_k_desc(group_max, topk_group)
                if n_group > topk_group:
                    gs = np.sort(group_max)[::-1]
                    self.diag["min_group_margin"] = min(self.diag["min_group_margin"], gs[topk_group - 1] - gs[topk_group])
                eligible = np.zeros(E, dtype=bool)
                for g in kept:
                    eligible[g * group_size : (g + 1) * group_size] = True
                cand = np.where(eligible, s, 0.0)  # masked_fill 0.0 (softmax scores are > 0)
            else:
                raise ReferenceError_(f"config.json: deepseek_v2 topk_method {method!r} is not supported")
            sel = top_k_desc(cand, k)
            self._route_margin(cand, sel)
            self.diag["routings"] += 1
            w = cand[sel]
            # Remote code: `if top_k > 1 and norm_topk_prob: w /= sum + 1e-20  else: w *= routed_scaling_factor`
            # -- the scaling factor applies only when the weights are NOT normalized. (transformers'
            # own deepseek_v2 port never normalizes and always scales; the two agree when
            # norm_topk_prob is false, as in V2 / V2-Lite.)
            if k > 1 and norm:
                w = w / (np.sum(w) + 1e-20)
            else:
                w = w * rsf
            ids[t], weights[t] = sel, w
        return ids, weights

    def _route_margin(self, cand: np.ndarray, sel: np.ndarray) -> None:
        rest = np.delete(cand, sel)
        if rest.size:
            self.diag["min_route_margin"] = min(self.diag["min_route_margin"], float(np.min(cand[sel]) - np.max(rest)))

    def moe(self, p: str, x: np.ndarray) -> np.ndarray:
        ids, weights = self.route(p, x)
        out = np.zeros_like(x)
        for e in np.unique(ids):
            tok, slot = np.nonzero(ids == e)
            out[tok] += weights[tok, slot][:, None] * self.mlp(f"{p}.experts.{e}", x[tok])
        if self.cfg.get("n_shared_experts"):
            out = out + self.mlp(p + ".shared_experts", x)
        return out

    # -- blocks -------------------------------------------------------------
    def decoder_layer(self, i: int, h: np.ndarray, positions: np.ndarray) -> np.ndarray:
        p = f"model.layers.{i}"
        h = h + self.attention(p + ".self_attn", rms_norm(h, self.w(p + ".input_layernorm.weight"), self.eps), positions)
        x = rms_norm(h, self.w(p + ".post_attention_layernorm.weight"), self.eps)
        h = h + (self.moe(p + ".mlp", x) if self.is_moe_layer(i) else self.mlp(p + ".mlp", x))
        return h

    def lm_head(self, h_normed: np.ndarray) -> np.ndarray:
        # tie_word_embeddings: transformers ties lm_head to the embedding, whatever the file holds.
        name = "model.embed_tokens.weight" if self.cfg.get("tie_word_embeddings") else "lm_head.weight"
        return h_normed @ self.w(name).T

    def check_ids(self, ids: list[int]) -> None:
        for t in ids:
            if not 0 <= t < self.vocab:
                raise ReferenceError_(f"token id {t} is outside the vocabulary [0, {self.vocab})")

    def forward(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(hidden after model.norm float64[T, H], logits float64[T, V])."""
        self.check_ids(ids)
        positions = np.arange(len(ids))
        h = self.w("model.embed_tokens.weight")[np.asarray(ids)]  # [T, H]
        for i in range(self.n_layers):
            h = self.decoder_layer(i, h, positions)
        h = rms_norm(h, self.w("model.norm.weight"), self.eps)
        return h, self.lm_head(h)

    def mtp_forward(self, next_ids: list[int], main_hidden: np.ndarray) -> np.ndarray:
        """MTP logits float64[T, V] (vLLM DeepSeekMultiTokenPredictorLayer).

        Position i combines the main model's normed hidden state h_i with the embedding
        of token i+1; the block attends causally over the MTP layer's own positions.
        """
        L = self.n_layers
        p = f"model.layers.{L}"
        T = len(next_ids)
        self.check_ids(next_ids)
        positions = np.arange(T)
        table = p + ".embed_tokens.weight" if self.ckpt.has(p + ".embed_tokens.weight") else "model.embed_tokens.weight"
        e = self.w(table)[np.asarray(next_ids)].copy()  # [T, H]
        e[positions == 0] = 0.0  # vLLM: inputs_embeds[positions == 0] = 0
        x = np.concatenate(
            [rms_norm(e, self.w(p + ".enorm.weight"), self.eps), rms_norm(main_hidden, self.w(p + ".hnorm.weight"), self.eps)],
            axis=-1,
        )  # [T, 2H], embedding first
        h = self.linear(p + ".eh_proj", x)
        h = self.decoder_layer(L, h, positions)
        h = rms_norm(h, self.w(p + ".shared_head.norm.weight"), self.eps)
        head = p + ".shared_head.head.weight"
        return h @ self.w(head).T if self.ckpt.has(head) else self.lm_head(h)


def eos_ids(model_dir: str, cfg: dict[str, Any]) -> set[int]:
    value = None
    gen_path = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(gen_path):
        with open(gen_path) as f:
            value = json.load(f).get("eos_token_id")
    if value is None:
        value = cfg.get("eos_token_id")
    if value is None:
        return set()
    return set(value) if isinstance(value, list) else {int(value)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = DeepSeekReference(args.model)
    try:
        prompt = [int(t) for t in args.prompt_ids.split(",") if t.strip() != ""]
    except ValueError as e:
        raise ReferenceError_(f"--prompt-ids: {e}") from e
    if not prompt:
        raise ReferenceError_("--prompt-ids: empty")
    if args.mtp_logits and model.n_mtp < 1:
        raise ReferenceError_(f"{args.model}: --mtp-logits needs num_nextn_predict_layers >= 1")
    stop = set() if args.ignore_eos else eos_ids(args.model, model.cfg)

    seq = list(prompt)
    generated: list[int] = []
    top: list[list[list[float]]] = []
    out: dict[str, Any] = {}
    min_logit_margin = math.inf
    min_rank_gap = math.inf
    first_hidden = None
    for step in range(args.max_tokens):
        hidden, logits = model.forward(seq)  # full recompute: simple and obviously causal
        last = logits[-1]
        if step == 0:
            first_hidden = hidden
            if args.logits:
                out["logits"] = last.tolist()
        token = int(np.argmax(last))  # greedy; ties go to the lower id
        srt = np.sort(last)[::-1]
        min_logit_margin = min(min_logit_margin, float(srt[0] - srt[1]))
        if args.top_logprobs > 0:
            # closest pair among ranks 1..N+1: a swap there changes the top-N ids or order
            n = min(args.top_logprobs + 1, srt.size)
            if n > 1:
                min_rank_gap = min(min_rank_gap, float(np.min(srt[: n - 1] - srt[1:n])))
            lp = log_softmax(last)
            best = top_k_desc(lp, args.top_logprobs)
            top.append([[int(i), float(lp[i])] for i in best])
        generated.append(token)
        seq.append(token)
        if token in stop:
            break
    if args.max_tokens == 0 and args.logits:
        first_hidden, logits = model.forward(seq)
        out["logits"] = logits[-1].tolist()
    if args.mtp_logits:
        if not generated:
            raise ReferenceError_("--mtp-logits needs --max-tokens >= 1 (the MTP head is fed the first generated token)")
        mtp = model.mtp_forward(prompt[1:] + [generated[0]], first_hidden)
        out["mtp_logits"] = mtp[-1].tolist()
    result: dict[str, Any] = {"token_ids": generated, "top_logprobs": top}
    result.update(out)
    if args.diagnostics:
        d = dict(model.diag)
        d["min_logit_margin"] = min_logit_margin
        d["min_top_logprobs_rank_gap"] = min_rank_gap
        result["diagnostics"] = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="float64 numpy reference for DeepSeek-V2/V3 checkpoints")
    ap.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids, used as given (no BOS added)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--top-logprobs", type=int, default=0)
    ap.add_argument("--logits", action="store_true", help="emit all logits at the last prompt position")
    ap.add_argument("--mtp-logits", action="store_true", help="emit the MTP head's logits at the last prompt position")
    ap.add_argument("--ignore-eos", action="store_true", help="do not stop after an EOS id")
    ap.add_argument("--diagnostics", action="store_true", help="emit logit / routing margins")
    args = ap.parse_args(argv)
    if args.max_tokens < 0 or args.top_logprobs < 0:
        print("deepseek_ref: --max-tokens and --top-logprobs must be >= 0", file=sys.stderr)
        return 2
    try:
        result = run(args)
    except ReferenceError_ as e:
        print(f"deepseek_ref: {e}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
