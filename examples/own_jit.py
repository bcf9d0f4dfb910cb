"""Calling specjax's pure functions from your own `jax.jit`.

One speculation round written by hand from the library's four steps (`loop.draft`, `loop.verify`,
`loop.accept`, which calls `rejection.accept`, and `loop.commit_round`) and jitted as part of the
user's own function; the result is checked against `specjax.generate`. Runs in seconds on a tiny
random model.

    python examples/own_jit.py
"""

import jax
import jax.numpy as jnp
from flax import nnx

import specjax
import specjax.sampling
from specjax import loop
from specjax.drafters import NGramDrafter
from specjax.lm import LM
from specjax.models import RopeConfig, Transformer, TransformerConfig

cfg = TransformerConfig(family="llama", vocab_size=64, dim=32, mlp_dim=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, rope=RopeConfig(theta=10000.0), tie_embeddings=False)
module = Transformer(cfg, rngs=nnx.Rngs(0))
lm, params = LM.split(module)  # split once; merged inside the jit
decoder = loop.Decoder(lm=lm, drafter=NGramDrafter(nmax=2), gamma=4, size=64)


@jax.jit
def my_generate(params, prompt_bp, lengths_b):
    batch = loop.Batch.make(prompt_bp, lengths_b, max_new_tokens=24)  # greedy, no EOS
    state = decoder.start(params, None, batch)

    def one_round(state):  # the library's spec_round, spelled out (one PRNG key per row)
        keys, k_draft, k_accept = specjax.sampling.split_keys(state.keys, 3)
        proposal, state = loop.draft(decoder, params, None, state.replace(keys=keys), k_draft)
        verified, cache = loop.verify(decoder, params, state, proposal)
        verdict = loop.accept(decoder, k_accept, state, proposal, verified)
        return loop.commit_round(decoder, params, None, state, verified, verdict, cache)

    state = jax.lax.while_loop(loop.not_finished, one_round, state)
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
