"""Drafters: prompt lookup by hand, layer skip, draft-model compatibility."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Tiny, tiny_lm

from specjax import api
from specjax.config import SamplingConfig
from specjax.errors import IncompatibleDraftError
from specjax.drafters.ngram import lookup
from specjax.models import Tokenizer

# -- prompt lookup -----------------------------------------------------------------------------


def _lookup(seq, gamma, nmax, nmin=1, eos=(), size=24):
    buf = np.zeros((1, size), np.int32)
    buf[0, :len(seq)] = seq
    eos_be = jnp.asarray([list(eos) + [-1]], jnp.int32)  # one row's EOS ids, -1 = unused slot
    props, n = lookup(jnp.asarray(buf), jnp.asarray([len(seq)]), gamma, nmax=nmax, nmin=nmin, eos_be=eos_be)
    return [int(t) for t in np.asarray(props)[0]], int(n[0])


def test_lookup_finds_the_longest_match_and_its_continuation():
    #           0  1  2  3  4  5  6  7  8  9 10
    seq = [5, 1, 2, 3, 9, 9, 7, 2, 3, 1, 2, 3]
    # tail "1 2 3" (n = 3) matches at 1 -> continuation 9 9 7 2
    assert _lookup(seq, 4, nmax=3) == ([9, 9, 7, 2], 3)
    # with nmax 2: tail "2 3" matches at 2 and at 7; the most recent (7) wins -> 1 2 3
    assert _lookup(seq, 4, nmax=2) == ([1, 2, 3, -1], 2)


def test_lookup_prefers_longer_matches_over_recent_ones():
    seq = [4, 1, 2, 8, 6, 2, 7, 1, 2]
    # n = 2: "1 2" at 1 -> 8 6; n = 1 would pick the more recent "2" at 5 -> 7
    assert _lookup(seq, 2, nmax=2) == ([8, 6], 2)
    assert _lookup(seq, 2, nmax=1) == ([7, 1], 1)


def test_lookup_proposes_nothing_without_a_match():
    assert _lookup([1, 2, 3, 4, 5], 3, nmax=3) == ([-1, -1, -1], 0)
    assert _lookup([1, 2, 3, 4, 5, 3, 4], 3, nmax=3, nmin=3) == ([-1, -1, -1], 0)  # only a 2-gram repeats
    assert _lookup([7], 3, nmax=2) == ([-1, -1, -1], 0)


def test_lookup_never_proposes_past_eos_or_past_the_committed_tokens():
    seq = [3, 4, 0, 5, 6, 3, 4]
    assert _lookup(seq, 4, nmax=2, eos=(0,)) == ([0, -1, -1, -1], 2)  # EOS itself, nothing after
    assert _lookup(seq, 4, nmax=2) == ([0, 5, 6, 3], 2)
    # a period-1 repeat: the continuation stops at the last committed token
    assert _lookup([1, 2, 2, 2], 4, nmax=1) == ([2, -1, -1, -1], 1)


def test_ngram_speeds_up_repetitive_text():
    """On a prompt that repeats itself, greedy lookup proposals are accepted and save target passes."""
    target = tiny_lm(0)
    prompt = [list(range(3, 23)) * 3]
    ar = api.generate(target, prompt, max_new_tokens=30)
    cont = ar.tokens[0]
    # feed the model's own greedy output back: its continuation then repeats text already in the buffer
    sp = api.generate(target, [prompt[0] + cont], draft="ngram:4", gamma=4, max_new_tokens=30)
    ar2 = api.generate(target, [prompt[0] + cont], max_new_tokens=30)
    assert sp.tokens == ar2.tokens
    assert sp.stats["drafted"][0] > 0


# -- layer skip --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["layerskip:2", "layerskip:2:own", "layerskip:0-1"])
def test_layer_skip_with_every_layer_accepts_everything_and_adds_no_params(spec):
    target = tiny_lm(0, layers=2)
    ar = api.generate(target, [[1, 2, 3], [4, 5, 6, 7, 8]], max_new_tokens=20)
    sp = api.generate(target, [[1, 2, 3], [4, 5, 6, 7, 8]], draft=spec, gamma=4, max_new_tokens=20)
    assert sp.tokens == ar.tokens
    assert sp.stats["acceptance_rate"] == 1.0
    mem = sp.stats["memory"]
    assert mem["draft_param_bytes"] == 0
    assert mem["draft_cache_bytes"] == (0 if not spec.endswith(":own") else mem["target_cache_bytes"])


# -- draft model compatibility -----------------------------------------------------------------


def _tokenizer(words):
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import WordLevel

    backend = Backend(WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    return Tokenizer(backend, bos_id=None, eos_ids=(1,), pad_id=None, add_bos=False)


def _with_tok(model, words):
    return Tiny(model.module, _tokenizer(words))


WORDS = [f"w{i}" for i in range(64)]


def test_incompatible_vocabulary_size_is_refused():
    target = _with_tok(tiny_lm(0), WORDS)
    draft = _with_tok(tiny_lm(1, vocab=80), [f"w{i}" for i in range(80)])
    with pytest.raises(IncompatibleDraftError, match="80 tokens.*64"):
        api.generate(target, [[1, 2, 3]], draft=draft, max_new_tokens=4)


def test_different_token_strings_are_refused_and_named():
    target = _with_tok(tiny_lm(0), WORDS)
    other = list(WORDS)
    other[17] = "zz"
    with pytest.raises(IncompatibleDraftError, match="id 17: target 'w17' vs draft 'zz'"):
        api.generate(target, [[1, 2, 3]], draft=_with_tok(tiny_lm(1), other), max_new_tokens=4)


def test_without_tokenizers_embedding_sizes_must_agree():
    with pytest.raises(IncompatibleDraftError, match="72 differs from the target's 64"):
        api.generate(tiny_lm(0), [[1, 2, 3]], draft=tiny_lm(1, vocab=72), max_new_tokens=4)


def test_padded_draft_vocabulary_is_accepted_and_masked():
    """The draft is the target with its embedding and head padded from 64 to 72 rows, the padded
    logits made huge: they must be masked out of the draft distribution, so every proposal is
    accepted and the output equals greedy target output."""
    from flax import nnx

    base = tiny_lm(0)
    target = _with_tok(base, WORDS)
    padded = tiny_lm(9, vocab=72)
    _, tstate = nnx.split(base.module)
    graphdef, state = nnx.split(padded.module)
    state = jax.tree.map(lambda t, p: t if t.shape == p.shape else p, tstate, state)
    state["embed"].value = state["embed"].value.at[:64].set(tstate["embed"].value)
    state["lm_head"].value = state["lm_head"].value.at[:, :64].set(tstate["lm_head"].value).at[:, 64:].set(50.0)
    draft = Tiny(nnx.merge(graphdef, state), _tokenizer(WORDS))
    ar = api.generate(target, [[1, 2, 3], [5, 6]], max_new_tokens=16)
    sp = api.generate(target, [[1, 2, 3], [5, 6]], draft=draft, gamma=3, max_new_tokens=16)
    assert sp.tokens == ar.tokens
    assert sp.stats["acceptance_rate"] == 1.0
    sp = api.generate(target, [[1, 2, 3], [5, 6]], draft=draft, gamma=3, max_new_tokens=16,
                      sampling=SamplingConfig(temperature=1.0))
    assert all(t < 64 for row in sp.tokens for t in row)
    assert sp.stats["acceptance_rate"] > 0.9
