"""Load llama-architecture GGUF files into mlx-lm.

`convert_gguf` turns a GGUF file, once, into an HF-style model directory (config.json,
safetensors, tokenizer files) under a cache root; `mlx_lm.utils.load(dir)` loads the result.

Tensors come from `mx.load`, which keeps Q4_0, Q4_1 and Q8_0 packed in MLX's affine layout
(group size 32). Floats are stored as float32 on CPU, because float16 matmuls on Linux CPU are
about 30x slower: 0.35 tok/s for the demo model with float16 scales, measured as below.

Single-stream decode on the demo model (SmolLM2-135M-Instruct Q4_1: Q4_1 layers, Q8_0 tied
embeddings), 2-core x86_64 Linux CPU, mlx 0.32.4, greedy, 128 tokens after a 37-token chat
prompt, median of 3 runs after a warm-up:

    packed weights, float32 scales/biases   11.0 tok/s
    dequantized float32 weights              5.6 tok/s

so CPU keeps the weights packed (DEFAULT_CPU_DEQUANTIZE). Measured with:

    for deq in (False, True):
        model, tok = mlx_lm.load(str(convert_gguf(gguf, cache, dequantize=deq)))
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": "Write a story about a cat."}], add_generation_prompt=True)
        for r in mlx_lm.stream_generate(model, tok, prompt, max_tokens=128): pass
        print(deq, r.generation_tps)
"""

from .config import model_config
from .convert import (
    CONVERTER_VERSION,
    DEFAULT_CPU_DEQUANTIZE,
    cache_name,
    convert_gguf,
    default_layout,
    write_model_dir,
)
from .header import (
    GGML_TYPE_NAMES,
    SUPPORTED_TYPES,
    GGUFError,
    GGUFHeader,
    check_supported,
    hf_name,
    read_header,
)
from .tensors import (
    GROUP_SIZE,
    MAX_SHARD_BYTES,
    Layout,
    convert_weights,
    dequantize_weights,
    load_tensors,
    quantization_config,
    quantized_bits,
    quantized_modules,
    save_weights,
    unpermute_rows,
)
from .tokenizer import (
    add_special_tokens,
    bos_eos_processor,
    build_tokenizer,
    byte_alphabet,
    byte_level_pre_tokenizer,
    byte_level_tokenizer,
    save_tokenizer,
    sentencepiece_merges,
    sentencepiece_tokenizer,
    special_tokens,
)

__all__ = [
    "CONVERTER_VERSION",
    "DEFAULT_CPU_DEQUANTIZE",
    "GGML_TYPE_NAMES",
    "GROUP_SIZE",
    "MAX_SHARD_BYTES",
    "SUPPORTED_TYPES",
    "GGUFError",
    "GGUFHeader",
    "Layout",
    "add_special_tokens",
    "bos_eos_processor",
    "build_tokenizer",
    "byte_alphabet",
    "byte_level_pre_tokenizer",
    "byte_level_tokenizer",
    "cache_name",
    "check_supported",
    "convert_gguf",
    "convert_weights",
    "default_layout",
    "dequantize_weights",
    "hf_name",
    "load_tensors",
    "model_config",
    "quantization_config",
    "quantized_bits",
    "quantized_modules",
    "read_header",
    "save_tokenizer",
    "save_weights",
    "sentencepiece_merges",
    "sentencepiece_tokenizer",
    "special_tokens",
    "unpermute_rows",
    "write_model_dir",
]
