"""The policy: a Flax NNX Qwen2/Qwen3 decoder (qwen.py) with its KV cache, built sharded from config or from a
Hugging Face checkpoint (builder.py `build_model`, hf_io.py import/export), and the tokenizers (tokenizer.py).

Shape-suffix legend used across the package: B batch rows, b = B/M rows of one micro-batch, M micro-batches,
T sequence (tokens), S cache slots, P prompt length, V vocabulary, D hidden (embed), F FFN width, N query heads,
K key/value heads, H head dim, G group size (samples per prompt), L layers.
"""
