#!/usr/bin/env python3
"""Self-checks of the float64 reference (numpy only, plain asserts).

Run: python3 test/reference/test_self.py   (exit status 0 and "all N checks passed")

These pin the reference to hand-computed facts and to identities that an
independent formulation must satisfy (absorbed MLA vs decompressed, latent-cache
decode vs full recompute, interleaved rope vs transformers' de-interleave +
rotate_half), so a mistake in the reference cannot hide behind agreement with
the engine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from typing import Any, Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
sys.path.insert(0, HERE)

import deepseek_ref as ref  # noqa: E402
import make_checkpoint as mk  # noqa: E402

CHECKS: list[Callable[[], None]] = []


def check(fn: Callable[[], None]) -> Callable[[], None]:
    CHECKS.append(fn)
    return fn


def close(a: Any, b: Any, tol: float = 1e-12) -> bool:
    return bool(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))) <= tol)


_TMP = tempfile.mkdtemp(prefix="deepseek-ref-self-")
_CKPTS: dict[str, str] = {}


def checkpoint(kind: str, seed: int = 3) -> str:
    key = f"{kind}-{seed}"
    if key not in _CKPTS:
        out = os.path.join(_TMP, key)
        with open(os.devnull, "w") as devnull:
            stdout = sys.stdout
            sys.stdout = devnull
            try:
                assert mk.main(["--kind", kind, "--out", out, "--seed", str(seed)]) == 0
            finally:
                sys.stdout = stdout
        _CKPTS[key] = out
    return _CKPTS[key]


# ---------------------------------------------------------------------------
# Number formats
# ---------------------------------------------------------------------------


@check
def fp8_e4m3fn_table_values() -> None:
    t = ref.FP8_E4M3FN
    assert t.shape == (256,)
    expect = {
        0x00: 0.0, 0x01: 2.0**-9, 0x07: 7 * 2.0**-9, 0x08: 2.0**-6, 0x0F: 1.875 * 2.0**-6,
        0x38: 1.0, 0x39: 1.125, 0x3F: 1.875, 0x40: 2.0, 0x7E: 448.0, 0x77: 240.0,
        0x80: -0.0, 0x81: -(2.0**-9), 0xB8: -1.0, 0xFE: -448.0,
    }
    for code, value in expect.items():
        assert t[code] == value, (hex(code), t[code], value)
    assert np.isnan(t[0x7F]) and np.isnan(t[0xFF])
    assert int(np.sum(np.isnan(t))) == 2  # e4m3fn: no infinities, only two NaNs
    assert np.all(np.diff(t[:127]) > 0)  # positive codes are monotonic
    assert np.array_equal(t[128:255], -t[:127])


@check
def fp8_encoder_round_to_nearest_even() -> None:
    codes = np.arange(127, dtype=np.uint8)
    assert np.array_equal(mk.e4m3_encode(ref.FP8_E4M3FN[codes]), codes)  # exact values round-trip
    assert np.array_equal(mk.e4m3_encode(-ref.FP8_E4M3FN[1:127]), codes[1:] | 0x80)
    # midpoints go to the even code
    assert mk.e4m3_encode(np.array([1.0625]))[0] == 0x38  # between 1.0 (0x38) and 1.125 (0x39)
    assert mk.e4m3_encode(np.array([1.1875]))[0] == 0x3A  # between 1.125 (0x39) and 1.25 (0x3a)
    assert mk.e4m3_encode(np.array([2.0**-10]))[0] == 0x00  # half the smallest subnormal -> 0 (even)
    assert mk.e4m3_encode(np.array([3 * 2.0**-10]))[0] == 0x02  # between 0x01 and 0x02 -> even
    assert mk.e4m3_encode(np.array([1.07]))[0] == 0x39  # nearest, not a tie
    assert mk.e4m3_encode(np.array([1000.0]))[0] == 0x7E  # saturates at 448, never NaN


@check
def bf16_round_to_nearest_even() -> None:
    x = np.array([1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -2.5, 1.0 + 2.0**-8 + 2.0**-20])
    got = mk.bf16_decode(mk.bf16_encode(x))
    assert close(got, [1.0, 1.0, 1.0 + 2.0**-6, -2.5, 1.0 + 2.0**-7], 0.0), got
    bits = np.array([0x3F80, 0xC020, 0x0001], dtype="<u2").tobytes()
    dec = ref._DTYPES["BF16"][1](bits)
    assert dec[0] == 1.0 and dec[1] == -2.5 and dec[2] == 2.0**-133


@check
def safetensors_roundtrip_all_dtypes_and_block_dequant() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (200, 150))  # 2x2 blocks of 128, both edges partial
    codes, scales = mk.fp8_block_quantize(w)
    assert scales.shape == (2, 2) and scales.dtype == np.float32
    tensors = {
        "a.f32": mk.Stored("F32", (3, 2), np.arange(6, dtype="<f4").tobytes()),
        "a.f16": mk.Stored("F16", (4,), np.array([0.5, -1.25, 65504, 2.0**-24], dtype="<f2").tobytes()),
        "a.bf16": mk.Stored("BF16", (2,), mk.bf16_encode(np.array([3.0, -0.15625])).tobytes()),
        "lin.weight": mk.Stored("F8_E4M3", (200, 150), codes.tobytes()),
        "lin.weight_scale_inv": mk.Stored("F32", (2, 2), scales.tobytes()),
    }
    d = os.path.join(_TMP, "rt")
    os.makedirs(d, exist_ok=True)
    mk.write_safetensors(os.path.join(d, "model.safetensors"), tensors)
    ck = ref.Checkpoint(d, (128, 128))
    assert close(ck.get("a.f32"), np.arange(6).reshape(3, 2), 0.0)
    assert close(ck.get("a.f16"), [0.5, -1.25, 65504, 2.0**-24], 0.0)
    assert close(ck.get("a.bf16"), [3.0, -0.15625], 0.0)
    got = ck.get("lin.weight")
    manual = np.empty((200, 150))
    for r in range(200):
        for c in range(150):
            manual[r, c] = ref.FP8_E4M3FN[codes[r, c]] * np.float64(scales[r // 128, c // 128])
    assert close(got, manual, 0.0)
    # e4m3 has 3 mantissa bits: relative error <= 2^-4 of the value, plus subnormal slack per block
    for i in range(2):
        for j in range(2):
            blk = (slice(i * 128, (i + 1) * 128), slice(j * 128, (j + 1) * 128))
            err = np.abs(got[blk] - w[blk])
            assert np.all(err <= np.abs(w[blk]) * 2.0**-4 + float(scales[i, j]) * 2.0**-9), (i, j, err.max())
    # bad scale shape is a clear error, not a crash
    tensors["lin.weight_scale_inv"] = mk.Stored("F32", (1, 2), scales[:1].tobytes())
    mk.write_safetensors(os.path.join(d, "model.safetensors"), tensors)
    try:
        ref.Checkpoint(d, (128, 128)).get("lin.weight")
        raise AssertionError("expected a ReferenceError_")
    except ref.ReferenceError_ as e:
        assert "lin.weight_scale_inv" in str(e)


# ---------------------------------------------------------------------------
# Rotary embedding
# ---------------------------------------------------------------------------


def hf_interleave_rope(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray, factor: float) -> np.ndarray:
    """transformers apply_rotary_pos_emb_interleave written out: de-interleave, then rotate_half."""
    d = x.shape[-1]
    x = x.reshape(*x.shape[:-1], d // 2, 2).swapaxes(-1, -2).reshape(*x.shape[:-1], d)
    freqs = pos[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb) * factor, np.sin(emb) * factor
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * cos + rotated * sin


@check
def rope_interleave_matches_hf_deinterleave_rotate_half() -> None:
    rng = np.random.default_rng(1)
    d, T = 16, 9
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, d, 2) / d)
    pos = np.arange(T, dtype=np.float64)
    q, k = rng.normal(size=(T, d)), rng.normal(size=(T, d))
    mine_q = ref.apply_rope(q, pos, inv_freq, 1.3, True)
    mine_k = ref.apply_rope(k, pos, inv_freq, 1.3, True)
    hf_q, hf_k = hf_interleave_rope(q, pos, inv_freq, 1.3), hf_interleave_rope(k, pos, inv_freq, 1.3)
    assert close(mine_q @ mine_k.T, hf_q @ hf_k.T, 1e-12)  # every q.k dot product identical
    assert not close(mine_q, hf_q, 1e-6)  # ...though the element order differs
    # rotation: norms scale by the attention factor only; scores depend on m - n only
    assert close(np.linalg.norm(mine_q, axis=-1), 1.3 * np.linalg.norm(q, axis=-1), 1e-12)
    a = ref.apply_rope(np.tile(q[:1], (T, 1)), pos, inv_freq, 1.0, True)
    b = ref.apply_rope(np.tile(k[:1], (T, 1)), pos, inv_freq, 1.0, True)
    assert close(a[3] @ b[1], a[7] @ b[5], 1e-12) and not close(a[3] @ b[1], a[3] @ b[2], 1e-6)
    # heads axis broadcast: [T, H, d] with the same position per row
    qh = rng.normal(size=(T, 3, d))
    assert close(ref.apply_rope(qh, pos, inv_freq, 1.0, True)[:, 2], ref.apply_rope(qh[:, 2], pos, inv_freq, 1.0, True), 0.0)
    # non-interleaved (rope_interleave false) pairs i with i + d/2, i.e. plain rotate_half
    x = rng.normal(size=(T, d))
    freqs = pos[:, None] * inv_freq[None, :]
    cos, sin = np.cos(np.concatenate([freqs, freqs], -1)), np.sin(np.concatenate([freqs, freqs], -1))
    plain = x * cos + np.concatenate([-x[:, d // 2 :], x[:, : d // 2]], -1) * sin
    assert close(ref.apply_rope(x, pos, inv_freq, 1.0, False), plain, 1e-12)


@check
def yarn_parameters_by_hand() -> None:
    cfg = {"qk_rope_head_dim": 16, "rope_theta": 10000.0, "max_position_embeddings": 1024,
           "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8}}
    inv, att = ref.rope_parameters(cfg)
    base = 10000.0 ** (-np.arange(0, 16, 2) / 16)  # extrapolation (original) frequencies
    # correction dims: 16*ln(256/(2*pi*32))/(2 ln 1e4) = 0.21 -> floor 0; 16*ln(256/(2*pi))/(2 ln 1e4) = 3.22 -> ceil 4
    ramp = np.clip(np.arange(8) / 4.0, 0, 1)  # (i - low) / (high - low)
    expect = base / 4.0 * ramp + base * (1 - ramp)
    assert close(inv, expect, 1e-15), (inv, expect)
    assert inv[0] == base[0] and close(inv[4:], base[4:] / 4.0, 1e-18)
    assert close(att, (0.1 * math.log(4) + 1) / (0.1 * 0.8 * math.log(4) + 1), 1e-15)
    # attention_factor given explicitly wins; without mscale pair -> get_mscale(factor)
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["rope_scaling"].update(attention_factor=0.5)
    assert ref.rope_parameters(cfg2)[1] == 0.5
    cfg3 = json.loads(json.dumps(cfg))
    del cfg3["rope_scaling"]["mscale"], cfg3["rope_scaling"]["mscale_all_dim"]
    assert close(ref.rope_parameters(cfg3)[1], 0.1 * math.log(4) + 1, 1e-15)
    # no scaling -> plain rope, factor 1
    inv0, att0 = ref.rope_parameters({"qk_rope_head_dim": 16, "rope_theta": 500.0})
    assert close(inv0, 500.0 ** (-np.arange(0, 16, 2) / 16), 1e-16) and att0 == 1.0
    # truncate false keeps the fractional correction range
    cfg4 = json.loads(json.dumps(cfg))
    cfg4["rope_scaling"]["truncate"] = False
    inv4, _ = ref.rope_parameters(cfg4)
    hi = 16 * math.log(256 / (2 * math.pi)) / (2 * math.log(10000))
    lo = 16 * math.log(256 / (2 * math.pi * 32)) / (2 * math.log(10000))
    r4 = np.clip((np.arange(8) - lo) / (hi - lo), 0, 1)
    assert close(inv4, base / 4.0 * r4 + base * (1 - r4), 1e-15)


@check
def softmax_scale_uses_mscale_all_dim_squared() -> None:
    d = checkpoint("v3-bf16-sharded")
    m = ref.DeepSeekReference(d)
    mscale = 0.1 * 0.8 * math.log(4.0) + 1.0
    assert close(m.softmax_scale, (24 + 16) ** -0.5 * mscale * mscale, 1e-15)
    m2 = ref.DeepSeekReference(checkpoint("v3-fp8"))
    assert m2.softmax_scale == (32 + 16) ** -0.5 and m2.attention_factor == 1.0


# ---------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------


class FakeCheckpoint:
    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.t = tensors

    def has(self, name: str) -> bool:
        return name in self.t

    def get(self, name: str) -> np.ndarray:
        return self.t[name]


def router(cfg: dict[str, Any], bias: np.ndarray | None = None) -> ref.DeepSeekReference:
    """A model whose gate weight is the identity, so the router logits are the input rows."""
    m = ref.DeepSeekReference.__new__(ref.DeepSeekReference)
    m.cfg = cfg
    m.model_type = cfg["model_type"]
    m.n_routed = cfg["n_routed_experts"]
    m._cache = {}
    m.diag = {"min_route_margin": math.inf, "min_group_margin": math.inf, "masked_group_selections": 0,
              "routings": 0, "bias_changed_routings": 0, "group_limit_changed_routings": 0}
    E = cfg["n_routed_experts"]
    t = {"l.gate.weight": np.eye(E)}
    if bias is not None:
        t["l.gate.e_score_correction_bias"] = bias
    m.ckpt = FakeCheckpoint(t)  # type: ignore[assignment]
    return m


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


V3 = {"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
      "norm_topk_prob": True, "routed_scaling_factor": 2.5}


@check
def v3_bias_changes_choice_but_not_weight() -> None:
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.15, 0.05, 0.6])
    bias = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.8, 0.0])  # lifts expert 6 (0.05) to 0.85 > 0.8
    ids, w = router(V3, bias).route("l", logit(scores)[None])
    assert set(ids[0].tolist()) == {0, 6}, ids
    order = list(ids[0])
    expect = {0: 0.9 / 0.95 * 2.5, 6: 0.05 / 0.95 * 2.5}  # unbiased scores, normalised, scaled
    for slot, e in enumerate(order):
        assert close(w[0, slot], expect[e], 1e-12), (e, w)
    # without the bias the plain top-2 wins
    ids2, _ = router(V3).route("l", logit(scores)[None])
    assert set(ids2[0].tolist()) == {0, 1}
    # norm_topk_prob false: raw scores times the factor
    cfg = dict(V3, norm_topk_prob=False)
    ids3, w3 = router(cfg, bias).route("l", logit(scores)[None])
    assert close(sorted(w3[0]), sorted([0.9 * 2.5, 0.05 * 2.5]), 1e-12)


@check
def v3_group_limit_by_top2_sum() -> None:
    # 4 groups of 2. Expert 0 is the best single expert but its group partner is weak:
    # group sums: g0 0.95+0.01, g1 0.7+0.65, g2 0.6+0.55, g3 0.2+0.1 -> keep g1, g2.
    scores = np.array([0.95, 0.01, 0.7, 0.65, 0.6, 0.55, 0.2, 0.1])
    cfg = dict(V3, n_group=4, topk_group=2, num_experts_per_tok=3)
    ids, w = router(cfg, np.zeros(8)).route("l", logit(scores)[None])
    assert set(ids[0].tolist()) == {2, 3, 4}, ids
    sel, eligible, gs, _ = ref.v3_select(scores, np.zeros(8), 4, 2, 3)
    assert close(gs, [0.96, 1.35, 1.15, 0.3], 1e-12) and eligible.tolist() == [False, False, True, True, True, True, False, False]
    # the group limit uses biased choices: a bias on expert 1 rescues group 0
    bias = np.array([0.0, 0.9, 0, 0, 0, 0, 0, 0])
    sel2 = ref.v3_select(scores, bias, 4, 2, 3)[0]
    assert set(sel2.tolist()) == {0, 1, 2}, sel2


@check
def v3_masked_groups_compete_with_zero_like_transformers() -> None:
    # Kept groups whose biased choices are negative lose to a masked expert at 0.0
    # (transformers masked_fill(..., 0.0)); -inf would have picked a kept expert.
    scores = np.array([0.10, 0.10, 0.05, 0.05])
    bias = np.array([0.5, -0.2, -0.3, -0.3])  # choices 0.6, -0.1, -0.25, -0.25
    sel, eligible, gs, masked = ref.v3_select(scores, bias, 2, 1, 2)
    assert eligible.tolist() == [True, True, False, False]
    assert sel[0] == 0 and sel[1] in (2, 3) and masked[sel[1]] == 0.0, (sel, masked)
    # the reference counts this so a test checkpoint can prove it never happens there
    m = router(dict(V3, n_routed_experts=4, n_group=2, topk_group=1), bias)
    m.route("l", logit(scores)[None])
    assert m.diag["masked_group_selections"] == 1


V2 = {"model_type": "deepseek_v2", "n_routed_experts": 6, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
      "topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": False, "routed_scaling_factor": 1.5}


@check
def v2_softmax_greedy_and_scaling_rule() -> None:
    logits = np.array([2.0, 0.5, 1.5, -1.0, 0.0, 1.0])
    p = np.exp(logits) / np.sum(np.exp(logits))
    ids, w = router(V2).route("l", logits[None])
    assert ids[0].tolist() == [0, 2]
    assert close(w[0], p[[0, 2]] * 1.5, 1e-15)  # not normalised -> scaled
    ids, w = router(dict(V2, norm_topk_prob=True)).route("l", logits[None])
    assert close(w[0], p[[0, 2]] / (p[0] + p[2] + 1e-20), 1e-15)  # normalised -> factor NOT applied
    ids, w = router(dict(V2, norm_topk_prob=True, num_experts_per_tok=1)).route("l", logits[None])
    assert close(w[0], [p[0] * 1.5], 1e-15)  # top_k 1: remote code skips normalisation, scales
    # group_limited_greedy: a group scores its max; 3 groups of 2, keep 1
    cfg = dict(V2, topk_method="group_limited_greedy", n_group=3, topk_group=1)
    logits2 = np.array([2.0, -3.0, 1.9, 1.8, 0.0, 0.1])  # g0 max 2.0 wins, though g1 holds #2 and #3
    ids, w = router(cfg).route("l", logits2[None])
    p2 = np.exp(logits2) / np.sum(np.exp(logits2))
    assert ids[0].tolist() == [0, 1] and close(w[0], p2[[0, 1]] * 1.5, 1e-15)


# ---------------------------------------------------------------------------
# Whole model
# ---------------------------------------------------------------------------


@check
def prefix_consistency_full_recompute_is_causal() -> None:
    for kind in ("v3-bf16-sharded", "v2-lite"):
        m = ref.DeepSeekReference(checkpoint(kind))
        ids = [5, 77, 300, 12, 9, 640, 41, 3]
        h_full, l_full = m.forward(ids)
        h_pre, l_pre = m.forward(ids[:5])
        assert close(l_full[:5], l_pre, 1e-10) and close(h_full[:5], h_pre, 1e-12), kind
        assert not close(l_full[5], l_full[6], 1e-3)


def absorbed_attention(m: ref.DeepSeekReference, p: str, x: np.ndarray, positions: np.ndarray, incremental: bool) -> np.ndarray:
    """MLA in the absorbed form over a latent cache: W_UK folded into the query, W_UV into the output.

    With incremental=True tokens are fed one at a time, each attending over the cache of
    (normed c_kv, rotated k_pe) built so far -- the decode path of a serving engine.
    """
    H, dn, dr, dv, r = m.n_heads, m.d_nope, m.d_rope, m.d_v, m.kv_lora_rank
    w_kv_b = m.w(p + ".kv_b_proj.weight").reshape(H, dn + dv, r)
    w_uk, w_uv = w_kv_b[:, :dn, :], w_kv_b[:, dn:, :]  # [H, dn, r], [H, dv, r]
    cache_c: list[np.ndarray] = []
    cache_pe: list[np.ndarray] = []
    outs = []
    steps = [[t] for t in range(x.shape[0])] if incremental else [list(range(x.shape[0]))]
    for chunk in steps:
        xc, pc = x[chunk], positions[chunk]
        if m.q_lora_rank is None:
            q = m.linear(p + ".q_proj", xc)
        else:
            q = m.linear(p + ".q_b_proj", ref.rms_norm(m.linear(p + ".q_a_proj", xc), m.w(p + ".q_a_layernorm.weight"), 1e-6))
        q = q.reshape(len(chunk), H, dn + dr)
        q_lat = np.einsum("thd,hdr->thr", q[..., :dn], w_uk)  # [t, H, r]
        q_pe = ref.apply_rope(q[..., dn:], pc, m.inv_freq, m.attention_factor, m.interleave)
        ckv = m.linear(p + ".kv_a_proj_with_mqa", xc)
        cache_c.extend(ref.rms_norm(ckv[:, :r], m.w(p + ".kv_a_layernorm.weight"), 1e-6))
        cache_pe.extend(ref.apply_rope(ckv[:, r:], pc, m.inv_freq, m.attention_factor, m.interleave))
        c, pe = np.array(cache_c), np.array(cache_pe)  # [S, r], [S, dr]
        s = (np.einsum("thr,sr->hts", q_lat, c) + np.einsum("thd,sd->hts", q_pe, pe)) * m.softmax_scale
        S = c.shape[0]
        qpos = np.array(chunk)[:, None]
        s = np.where(np.arange(S)[None, :] > qpos, -np.inf, s)
        o_lat = np.einsum("hts,sr->thr", ref.softmax(s, -1), c)  # [t, H, r]
        outs.append(np.einsum("thr,hvr->thv", o_lat, w_uv).reshape(len(chunk), H * dv))
    return m.linear(p + ".o_proj", np.concatenate(outs))


@check
def absorbed_and_incremental_mla_match_decompressed() -> None:
    for kind in ("v3-bf16-sharded", "v3-fp8", "v2-lite"):
        m = ref.DeepSeekReference(checkpoint(kind))
        rng = np.random.default_rng(4)
        x = rng.normal(size=(7, m.hidden))
        pos = np.arange(7)
        full = m.attention("model.layers.1.self_attn", x, pos)
        assert close(absorbed_attention(m, "model.layers.1.self_attn", x, pos, False), full, 1e-11), kind
        assert close(absorbed_attention(m, "model.layers.1.self_attn", x, pos, True), full, 1e-11), kind


@check
def mtp_ignores_the_token_at_position_zero_and_depends_on_the_rest() -> None:
    m = ref.DeepSeekReference(checkpoint("v3-fp8"))
    ids = [4, 80, 200, 31]
    h, _ = m.forward(ids)
    a = m.mtp_forward([80, 200, 31, 7], h)
    b = m.mtp_forward([81, 200, 31, 7], h)  # differs only in the token fed at position 0 (zeroed)
    c = m.mtp_forward([80, 200, 31, 8], h)
    assert close(a, b, 0.0)
    assert not close(a[-1], c[-1], 1e-6) and close(a[:-1], c[:-1], 1e-12)


@check
def checkpoint_layouts() -> None:
    d = checkpoint("v3-fp8")
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        wm = json.load(f)["weight_map"]
    scales = [n for n in wm if n.endswith("_scale_inv")]
    assert len(scales) > 50 and all(wm[n] != wm[n[: -len("_scale_inv")]] for n in scales)
    ck = ref.Checkpoint(d, (128, 128))
    assert ck.dtype("model.layers.1.mlp.experts.3.down_proj.weight") == "F8_E4M3"
    assert ck.dtype("model.layers.3.self_attn.kv_b_proj.weight") == "F8_E4M3"  # the MTP block too
    assert ck.dtype("model.layers.1.mlp.gate.e_score_correction_bias") == "F32"
    assert ck.dtype("model.embed_tokens.weight") == "BF16" and ck.dtype("model.norm.weight") == "BF16"
    assert ck.raw("model.layers.0.self_attn.q_b_proj.weight_scale_inv").shape == (2, 2)  # 240 x 136: partial blocks
    d = checkpoint("v3-bf16-sharded")
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        wm = json.load(f)["weight_map"]
    assert len(set(wm.values())) >= 3
    assert wm["model.layers.0.self_attn.q_a_proj.weight"] != wm["model.layers.0.self_attn.q_a_layernorm.weight"]
    d = checkpoint("v2-lite")
    assert os.path.exists(os.path.join(d, "model.safetensors"))
    assert not os.path.exists(os.path.join(d, "model.safetensors.index.json"))
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["q_lora_rank"] is None and cfg["num_nextn_predict_layers"] == 0 and cfg["n_shared_experts"] == 2
    assert ref.Checkpoint(d, (128, 128)).dtype("model.norm.weight") == "F32"


@check
def cli_output_contract() -> None:
    d = checkpoint("v3-bf16-sharded")
    cmd = [sys.executable, os.path.join(HERE, "deepseek_ref.py"), "--model", d, "--prompt-ids", "3,14,159,26",
           "--max-tokens", "5", "--top-logprobs", "4", "--logits", "--mtp-logits", "--ignore-eos"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    assert len(out["token_ids"]) == 5 and len(out["top_logprobs"]) == 5
    m = ref.DeepSeekReference(d)
    h, logits = m.forward([3, 14, 159, 26])
    assert close(out["logits"], logits[-1], 0.0) and len(out["logits"]) == 823
    assert out["token_ids"][0] == int(np.argmax(logits[-1])) == out["top_logprobs"][0][0][0]
    lp = [p for _, p in out["top_logprobs"][0]]
    assert lp == sorted(lp, reverse=True) and close(lp[0], ref.log_softmax(logits[-1])[out["token_ids"][0]], 0.0)
    assert close(np.sum(np.exp(ref.log_softmax(logits[-1]))), 1.0, 1e-12)
    mtp = m.mtp_forward([14, 159, 26, out["token_ids"][0]], h)
    assert close(out["mtp_logits"], mtp[-1], 0.0)
    # the greedy continuation equals a fresh forward over prompt + generated
    _, l2 = m.forward([3, 14, 159, 26] + out["token_ids"][:2])
    assert out["token_ids"][2] == int(np.argmax(l2[-1]))
    bad = subprocess.run(cmd[:4] + [os.path.join(_TMP, "nowhere"), "--prompt-ids", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nowhere" in bad.stderr


def main() -> int:
    failed = 0
    for fn in CHECKS:
        try:
            fn()
            print(f"ok   {fn.__name__}")
        except Exception:  # noqa: BLE001 -- report every failing check, then fail
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
    shutil.rmtree(_TMP, ignore_errors=True)
    if failed:
        print(f"{failed} of {len(CHECKS)} checks failed")
        return 1
    print(f"all {len(CHECKS)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
