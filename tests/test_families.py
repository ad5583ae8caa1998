"""Every mlx-lm cache family, batched with others by the generator the worker gives it, yields
the same greedy tokens as mlx-lm's single-stream `generate_step`.

Tiny random models of each family (built in memory, a small vocabulary), prompts longer than
their attention windows, arriving while others decode, ending at different lengths."""

from __future__ import annotations

import importlib
import random
from typing import Any

import mlx.core as mx
import pytest
from mlx.utils import tree_map_with_path
from mlx_lm.generate import generate_step

from mlxdeploy.engine.batch import FastBatchGenerator
from mlxdeploy.engine.generator import UNPADDED, SlotGenerator
from mlxdeploy.engine.mixed import MIXABLE, MixedForward
from mlxdeploy.engine.sampling import greedy
from mlxdeploy.engine.storage import kinds
from tests.batched import batched

VOCAB = 512
BASE = {
    "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": VOCAB,
    "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "tie_word_embeddings": True,
    "rope_theta": 10000.0,
}  # fmt: skip
WINDOW = 16
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
                  "mlp_only_layers": [], "moe_intermediate_size": 32, "norm_topk_prob": True},
    "deepseek_v3": {"n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2,
                    "moe_intermediate_size": 32, "kv_lora_rank": 16, "q_lora_rank": None,
                    "qk_rope_head_dim": 8, "v_head_dim": 16, "qk_nope_head_dim": 8,
                    "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1},
    "gemma3_text": {"sliding_window": WINDOW, "sliding_window_pattern": 2,
                    "query_pre_attn_scalar": 16},
    "gpt_oss": {"sliding_window": WINDOW, "num_local_experts": 2, "num_experts_per_tok": 1,
                "layer_types": ["sliding_attention", "full_attention"] * 2,
                "swiglu_limit": 7.0},
    "ministral3": {"sliding_window": WINDOW,
                   "layer_types": ["sliding_attention", "full_attention"] * 2,
                   "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default",
                                       "llama_4_scaling_beta": 0.1,
                                       "original_max_position_embeddings": 4096}},
    "qwen3_5": {"linear_num_value_heads": 4, "linear_num_key_heads": 2,
                "linear_key_head_dim": 16, "linear_value_head_dim": 16,
                "linear_conv_kernel_dim": 4, "full_attention_interval": 2,
                "partial_rotary_factor": 0.25},
    "qwen3_next": {"linear_num_value_heads": 4, "linear_num_key_heads": 2,
                   "linear_key_head_dim": 16, "linear_value_head_dim": 16,
                   "linear_conv_kernel_dim": 4, "full_attention_interval": 2,
                   "partial_rotary_factor": 0.25, "num_experts": 4, "num_experts_per_tok": 2,
                   "decoder_sparse_step": 1, "shared_expert_intermediate_size": 32,
                   "mlp_only_layers": [], "moe_intermediate_size": 32, "norm_topk_prob": True},
    "falcon_h1": {"mamba_d_ssm": 64, "mamba_n_heads": 4, "mamba_d_head": 16,
                  "mamba_d_state": 16, "mamba_n_groups": 1, "mamba_chunk_size": 16},
    "lfm2": {"norm_eps": 1e-5, "conv_bias": False, "conv_L_cache": 3, "block_dim": 64,
             "block_multiple_of": 16, "block_ffn_dim_multiplier": 1.0,
             "block_auto_adjust_ff_dim": False, "full_attn_idxs": [1, 3]},
    "mamba2": {"num_heads": 4, "head_dim": 32, "state_size": 16, "layer_norm_epsilon": 1e-5,
               "conv_kernel": 4, "n_groups": 1, "use_bias": False, "use_conv_bias": True,
               "time_step_limit": [0.0, 100.0], "time_step_rank": 8, "chunk_size": 16},
    "nemotron_h": {"attention_bias": False, "mamba_num_heads": 4, "mamba_head_dim": 16,
                   "mamba_proj_bias": False, "ssm_state_size": 16, "conv_kernel": 4,
                   "n_groups": 1, "mlp_bias": False, "layer_norm_epsilon": 1e-5,
                   "use_bias": False, "use_conv_bias": True,
                   "hybrid_override_pattern": ["M", "*", "M", "-"]},
}  # fmt: skip
MAX_TOKENS = 10


def _model(family: str) -> Any:
    config = {**BASE, **FAMILIES[family], "model_type": family}
    module = importlib.import_module(f"mlx_lm.models.{family}")
    mx.random.seed(3)
    model = module.Model(module.ModelArgs.from_dict(config))
    # At their initial scale, random weights give each prompt one token over and over.
    model.update(tree_map_with_path(_louder, model.parameters()))
    mx.eval(model.parameters())
    return model


def _louder(path: str, weight: mx.array) -> mx.array:
    return weight if "norm" in path or weight.ndim < 2 else weight * 3


def _single(model: Any, prompt: list[int], n: int) -> list[int]:
    steps = generate_step(mx.array(prompt), model, max_tokens=n, sampler=greedy)
    return [int(token) for (token, _), _ in zip(steps, range(n), strict=False)]


def _batched(
    family: str, model: Any, prompts: list[list[int]], lengths: list[int]
) -> list[list[int]]:
    """Half the prompts at once, the rest while those decode."""
    kind = SlotGenerator if kinds(model) else FastBatchGenerator
    group = 1 if family in UNPADDED else 2  # as the worker reads them
    generator = kind(
        model, completion_batch_size=16, prefill_batch_size=group, prefill_step_size=16
    )
    return batched(generator, prompts, lengths)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batched_greedy_tokens_match_single_stream(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the family's layers allow it, the later prompts are read inside decode steps."""
    mixed: list[int] = []
    forward = MixedForward.__call__

    def counted(self: MixedForward, *args: Any) -> mx.array:
        mixed.append(1)
        return forward(self, *args)

    monkeypatch.setattr(MixedForward, "__call__", counted)
    model = _model(family)
    rng = random.Random(family)
    # 12 requests: more than a block of slots (8), the later half arriving as others decode.
    prompts = [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(20, 45))] for _ in range(12)]
    lengths = [MAX_TOKENS - (i % 3) * 3 for i in range(len(prompts))]
    expected = [_single(model, p, n) for p, n in zip(prompts, lengths, strict=True)]
    assert len({t for tokens in expected for t in tokens}) > len(prompts), "tokens too uniform"
    assert _batched(family, model, prompts, lengths) == expected
    assert bool(mixed) == (family in MIXABLE)
