"""Calling specjax's pure functions from your own `jax.jit`.

One speculation round written by hand from the library's pieces (drafter.propose, loop.verify,
rejection.accept_greedy, loop.commit) and jitted as part of the user's own function; the result is
checked against `specjax.generate`. Runs in seconds on a tiny random model.

    python examples/own_jit.py
"""

import jax
import jax.numpy as jnp
from flax import nnx

import specjax
from specjax import loop, rejection, sampling
from specjax.config import DecodeConfig, SamplingConfig
from specjax.drafters import NGramDrafter
from specjax.lm import LM
from specjax.models import RopeConfig, Transformer, TransformerConfig

cfg = TransformerConfig(family="llama", vocab_size=64, dim=32, mlp_dim=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, rope=RopeConfig(theta=10000.0), tie_embeddings=False)
module = Transformer(cfg, rngs=nnx.Rngs(0))
lm, params = LM.split(module)  # split once; merged inside the jit
drafter = NGramDrafter(nmax=2)
decode = DecodeConfig(max_new_tokens=24)
greedy = SamplingConfig()
G, SIZE = 4, 64


@jax.jit
def my_generate(params, prompt_bp, lengths_b):
    B = prompt_bp.shape[0]
    state = loop.decode_start(lm, params, drafter, None, prompt_bp, lengths_b, jnp.ones((B,), bool),
                              jax.random.key(0), gamma=G, sampling_cfg=greedy, decode=decode, size=SIZE)

    def one_round(state):  # the library's spec_round, spelled out
        draft_bg, _, state = drafter.propose(None, params, state, state.key, G, greedy, None)
        logits_bgv, cache = loop.verify(lm, params, state, draft_bg, may_abstain=True)
        n_b, next_b = rejection.accept_greedy(draft_bg, sampling.greedy(logits_bgv))
        block_bg1 = jnp.where(jnp.arange(G + 1) < n_b[:, None],
                              jnp.pad(draft_bg, ((0, 0), (0, 1))), next_b[:, None])
        state, _ = loop.commit(state, block_bg1, n_b + 1, decode, headroom=G + 1)
        return state.replace(cache=cache.rollback(state.lengths - 1))

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.done), one_round, state)
    return state.tokens, state.lengths


prompts = [[3, 4, 5, 3, 4, 5, 3, 4], [9, 8, 7]]
prompt_bp = jnp.asarray([p + [0] * (8 - len(p)) for p in prompts])
tokens, lengths = my_generate(params, prompt_bp, jnp.asarray([len(p) for p in prompts]))
mine = [tokens[i, len(p):int(lengths[i])].tolist() for i, p in enumerate(prompts)]


class Model:
    module, tokenizer = module, None


reference = specjax.generate(Model, prompts, max_new_tokens=24).tokens
assert mine == reference, (mine, reference)
print("hand-written round inside my own jit == specjax.generate:", mine)
