"""Bad input through the Python API: a ConfigError up front that names the argument, never a JAX
traceback or a silently wrong result."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import Tiny, tiny_lm

from specjax import api, validate
from specjax.config import SamplingConfig
from specjax.drafters import registry
from specjax.drafters.ngram import lookup
from specjax.errors import ConfigError
from specjax.sampler import Sampler


@pytest.fixture(scope="module")
def target():
    return tiny_lm(0)


@pytest.fixture(scope="module")
def sampler(target):
    return Sampler(target, "ngram:2", gamma=3)


BAD_PROMPTS = [
    ([[1.0, 2.0]], r"prompt 0: token 0 must be an integer id, got 1\.0"),
    ([[1, 2], [3, True]], r"prompt 1: token 1 must be an integer id, got True"),
    (b"\x01\x02", "got bytes"),
    ([b"ab"], r"prompt 0 must be a string or a list of integer token ids, got b'ab'"),
    (np.ones((2, 3), np.float32), "integer token ids, got 2-D float32"),
    (np.ones((2, 2, 2), np.int32), "1-D or 2-D integer token ids, got 3-D"),
    ([], "prompts is empty"),
    ([[1, 2], None], r"prompt 1 must be a string or a list of integer token ids, got None"),
    ({"ids": [1]}, "got dict"),
    ([[1, -3]], r"prompt 0: token 1 is -3, outside >= 0"),
    ([[1, 64]], r"token ids outside \[0, 64\)"),
]


@pytest.mark.parametrize("prompts,message", BAD_PROMPTS)
def test_bad_prompts_are_refused_naming_the_prompt(sampler, prompts, message):
    with pytest.raises(ConfigError, match=message):
        sampler(prompts, max_new_tokens=4)


def test_prompts_may_be_a_2d_integer_array_or_numpy_ids(sampler):
    arr = np.asarray([[1, 2, 3], [4, 5, 6]], np.int64)
    from_array = sampler(arr, max_new_tokens=4).tokens
    assert from_array == sampler([[1, 2, 3], [4, 5, 6]], max_new_tokens=4).tokens
    assert sampler([np.int32(1), np.int64(2), 3], max_new_tokens=4).tokens == [from_array[0]]


BAD_CALLS = [
    (dict(max_new_tokens=2.5), r"max_new_tokens must be an integer, got 2\.5"),
    (dict(max_new_tokens=True), "max_new_tokens must be an integer, got True"),
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1, got 0"),
    (dict(max_new_tokens=[4, "5"]), r"max_new_tokens\[1\] must be an integer, got '5'"),
    (dict(seed=2**32), r"seed must be <= 4294967295, got 4294967296"),
    (dict(seed=-1), "seed must be >= 0, got -1"),
    (dict(seed=1.5), r"seed must be an integer, got 1\.5"),
    (dict(seed=[1, 2**40]), r"seed\[1\] must be <= 4294967295"),
    (dict(sampling={"temperature": 0.7, "topk": 5}), r"sampling: unknown keys \['topk'\]"),
    (dict(sampling="greedy"), "sampling must be a specjax.SamplingConfig"),
    (dict(sampling=[SamplingConfig(), 0.7]), r"sampling\[1\] must be a specjax.SamplingConfig"),
]


@pytest.mark.parametrize("kwargs,message", BAD_CALLS)
def test_bad_call_arguments_are_refused_naming_them(sampler, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sampler([[1, 2, 3], [4, 5]], **kwargs)


def test_numpy_integers_are_accepted_and_a_dict_is_a_sampling_config(sampler):
    a = sampler([[1, 2, 3]], max_new_tokens=np.int64(5), seed=np.int32(3),
                sampling={"temperature": 0.8, "top_k": np.int64(7)})
    b = sampler([[1, 2, 3]], max_new_tokens=5, seed=3, sampling=SamplingConfig(temperature=0.8, top_k=7))
    assert a.tokens == b.tokens


BAD_SAMPLING = [
    (dict(temperature=float("inf")), "temperature must be finite, got inf"),
    (dict(temperature=float("nan")), "temperature must be finite, got nan"),
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(temperature="0.7"), "temperature must be a number, got '0.7'"),
    (dict(top_k=2.5), r"top_k must be an integer, got 2\.5"),
    (dict(top_k=True), "top_k must be an integer, got True"),
    (dict(top_k=-1), "top_k must be >= 0, got -1"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_p=float("nan")), "top_p must be finite"),
]


@pytest.mark.parametrize("kwargs,message", BAD_SAMPLING)
def test_sampling_values_that_make_no_sense_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**kwargs)


def test_top_k_zero_is_off_in_the_api_as_in_the_cli_and_a_float32_zero_temperature_is_greedy():
    assert SamplingConfig(temperature=0.5, top_k=0) == SamplingConfig(temperature=0.5)
    assert SamplingConfig(temperature=1e-46).greedy and not SamplingConfig(temperature=1e-30).greedy


BAD_SAMPLERS = [
    (lambda t: Sampler("smollm2-135m-instruct"), r"load it with specjax.models.load\('smollm2-135m-instruct'\)"),
    (lambda t: Sampler(None), "target must be a loaded model .* got NoneType"),
    (lambda t: Sampler(t, "ngram:2", gamma=True), "gamma must be an integer, got True"),
    (lambda t: Sampler(t, "ngram:2", gamma=2.0), r"gamma must be an integer, got 2\.0"),
    (lambda t: Sampler(t, "ngram:2", gamma=0), "gamma must be >= 1, got 0"),
    (lambda t: Sampler(t, "ngram:3:1:7"), "expected ngram:NMAX"),
    (lambda t: Sampler(t, "ngram:x"), "with integers"),
    (lambda t: Sampler(t, "ngram:2", verify="fast"), "verify must be one of batched, stepwise, got 'fast'"),
]


@pytest.mark.parametrize("case", range(len(BAD_SAMPLERS)))
def test_bad_sampler_arguments_are_refused(target, case):
    build, message = BAD_SAMPLERS[case]
    with pytest.raises(ConfigError, match=message):
        build(target)


def test_numpy_gamma_is_accepted_and_never_more_proposals_than_tokens_wanted(target):
    s = Sampler(target, "ngram:2", gamma=np.int64(1000))
    assert s.gamma == 1000
    assert s.decoder(max_new_tokens=8, prompt_len=16).gamma == 7  # the prefill emits the first token
    assert s.decoder(max_new_tokens=1, prompt_len=16).gamma == 1
    assert s([[1, 2, 1, 2, 1, 2]], max_new_tokens=8).stats["new_tokens"] == [8]


def test_a_prompt_with_a_lone_surrogate_is_refused():
    with pytest.raises(ConfigError, match="prompt 1 is not valid Unicode text"):
        validate.text("prompt 1", "abc\ud800def")


def _with_context(model: Tiny, context: int) -> Tiny:
    from flax import nnx

    graphdef, state = nnx.split(model.module)
    module = nnx.merge(graphdef, state)
    module.config = dataclasses.replace(module.config, max_context=context)
    return Tiny(module)


def test_prompt_plus_new_tokens_beyond_the_context_is_refused_before_compiling(target):
    small = _with_context(target, 12)
    s = Sampler(small, "ngram:2", gamma=3)
    with pytest.raises(ConfigError, match=r"prompt 1 has 10 tokens and max_new_tokens is 3: 13 tokens exceed the "
                                          r"target's context length of 12"):
        s([[1, 2], list(range(1, 11))], max_new_tokens=3)
    assert s([[1, 2], list(range(1, 11))], max_new_tokens=2).stats["new_tokens"] == [2, 2]


def test_learned_positions_are_the_context_length():
    from specjax.models import TransformerConfig

    cfg = TransformerConfig(family="gpt2", vocab_size=8, dim=8, mlp_dim=16, num_layers=1, num_heads=2,
                            num_kv_heads=2, head_dim=4, position="learned", max_positions=20)
    assert cfg.context_length == 20
    assert dataclasses.replace(cfg, max_context=16).context_length == 16


def test_a_request_beyond_the_device_memory_is_refused_naming_the_estimate(target, monkeypatch):
    from specjax import report

    monkeypatch.setattr(report, "device_memory_bytes", lambda: 1000)
    with pytest.raises(ConfigError, match=r"this call needs at least .* GiB .* but the device has 0\.0 GiB"):
        Sampler(target)([[1, 2, 3]], max_new_tokens=4)


def test_ngram_trace_cost_does_not_grow_with_nmax():
    """ngram:1000000000 once spent minutes tracing a Python loop; the lookup now loops on device, at
    most once per buffer slot, and gives what a small NMAX gives when no longer match exists."""
    import jax
    import jax.numpy as jnp

    tokens = jnp.asarray([[5, 6, 7, 5, 6, 7, 5, 6, 0, 0, 0, 0]])
    lengths = jnp.asarray([8])
    huge = jax.make_jaxpr(lambda t, n: lookup(t, n, 3, nmax=10**9))(tokens, lengths)
    small = jax.make_jaxpr(lambda t, n: lookup(t, n, 3, nmax=2))(tokens, lengths)
    assert len(str(huge)) < 2 * len(str(small))
    assert np.asarray(lookup(tokens, lengths, 3, nmax=10**9)[0]).tolist() == [[7, 5, 6]]
    assert registry.parse("ngram:1000000000").nmax == 10**9


def test_generate_refuses_a_name_as_target():
    with pytest.raises(ConfigError, match=r"load it with specjax.models.load\('gemma3-270m'\)"):
        api.generate("gemma3-270m", "hello")
