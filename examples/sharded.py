"""Sharded speculative decoding over 8 CPU devices: the same tokens on every mesh.

    python examples/sharded.py
"""

import jax

jax.config.update("jax_num_cpu_devices", 8)  # before anything touches the backend

from flax import nnx  # noqa: E402

import specjax  # noqa: E402
from specjax.models import RopeConfig, Transformer, TransformerConfig  # noqa: E402
from specjax.sharding import make_mesh  # noqa: E402

cfg = TransformerConfig(family="llama", vocab_size=64, dim=32, mlp_dim=64, num_layers=2, num_heads=8,
                        num_kv_heads=2, head_dim=8, rope=RopeConfig(theta=10000.0), tie_embeddings=False)


class Model:
    module, tokenizer = Transformer(cfg, rngs=nnx.Rngs(0)), None


prompts = [[1, 2, 3, 1, 2], [4, 5, 6], [7, 8], [9], [10, 11], [12, 13, 14], [15], [16, 17]]
single = specjax.generate(Model, prompts, draft="layerskip:1", max_new_tokens=16)
for data, model in [(1, 8), (2, 4), (8, 1)]:
    out = specjax.generate(Model, prompts, draft="layerskip:1", max_new_tokens=16, mesh=make_mesh(data, model))
    assert out.tokens == single.tokens
    print(f"mesh {data}x{model}: same tokens as one device")
