"""Sharded decoding on 8 CPU devices (conftest sets jax_num_cpu_devices = 8), and two processes
through jax.distributed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Tiny
from flax import nnx
from jax.sharding import PartitionSpec as P

from specjax import api, sampler
from specjax.cache import KVCache
from specjax.config import SamplingConfig
from specjax.lm import LM
from specjax.models import RopeConfig, Transformer, TransformerConfig
from specjax.sharding import (
    DEFAULT_RULES,
    Plan,
    ShardingRuleError,
    make_mesh,
    param_shardings,
    place,
    prepare_for_mesh,
    tree_shardings,
)

MESHES = [(1, 8), (2, 4), (8, 1)]
PROMPTS = [[1, 2, 3, 4, 5, 1, 2, 3, 4], [7, 8, 9], list(range(10, 30)), [5], [6, 7], [8, 9, 10], [11], [12, 13]]

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (CPU) devices")


def gqa_model(seed=0, kv_heads=2, layers=2) -> Tiny:
    """8 query heads over 2 kv heads: fewer kv heads than the model axis has devices."""
    cfg = TransformerConfig(family="llama", vocab_size=64, dim=32, mlp_dim=64, num_layers=layers, num_heads=8,
                            num_kv_heads=kv_heads, head_dim=8, rope=RopeConfig(theta=10000.0), tie_embeddings=False)
    module = Transformer(cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(module)
    return Tiny(nnx.merge(graphdef, jax.tree.map(lambda x: x * 25 if x.ndim >= 2 else x, state)))


def eagle_head(target):
    """A random EAGLE-3 head over 40 of the 64 ids, reading layers 0, 1 and 2 (replicated by the
    default draft rules; its cache lives in the drafter's state)."""
    from specjax.models import head_config_for, random_head

    cfg = head_config_for(target.module.config, draft_vocab_size=40, taps=(0, 1, 2))
    return random_head(cfg, seed=4, target_ids=np.arange(0, 64, 64 / 40).astype(int), scale=10.0)


@pytest.fixture(scope="module")
def target():
    return gqa_model()


@pytest.fixture(scope="module")
def single_device(target):
    draft = gqa_model(seed=3, layers=1)
    out = {}
    out["eagle"] = api.generate(target, PROMPTS, draft=eagle_head(target), gamma=3, max_new_tokens=12).tokens
    for name, d in (("none", None), ("layerskip", "layerskip:1"), ("model", draft)):
        out[name] = api.generate(target, PROMPTS, draft=d, gamma=3, max_new_tokens=12, seed=5, sampling=MIXED).tokens
    return draft, out


# Rows 0-3 greedy, rows 4-7 sampled at T = 1 (one program checks both kinds of row under sharding).
MIXED = [SamplingConfig()] * 4 + [SamplingConfig(temperature=1.0)] * 4


# Every drafter on the meshes that split the model (1x8, 2x4); splitting only the batch (8x1) is
# drafter-agnostic and runs with plain decoding and the EAGLE head (the test budget).
@pytest.mark.parametrize("mesh_shape,drafter", [(m, d) for d in ("none", "layerskip", "model", "eagle") for m in MESHES
                                                if m != (8, 1) or d in ("none", "eagle")],
                         ids=lambda x: f"{x[0]}x{x[1]}" if isinstance(x, tuple) else x)
def test_meshes_give_single_device_tokens(target, single_device, mesh_shape, drafter):
    draft_model, ref = single_device
    draft = {"none": None, "layerskip": "layerskip:1", "model": draft_model, "eagle": eagle_head(target)}[drafter]
    mesh = make_mesh(*mesh_shape)
    if drafter == "eagle":  # greedy only, for the test budget (the head samples in test_distribution)
        greedy = api.generate(target, PROMPTS, draft=draft, gamma=3, max_new_tokens=12, mesh=mesh)
        assert greedy.tokens == ref[drafter]
        return
    # Same seed, same tokens, greedy and sampled rows alike: keys are split identically and threefry
    # random bits do not depend on sharding; only the summation order of sharded matmuls differs
    # (~1e-7), which would change a sample only if it moved a comparison across a tie.
    mixed = api.generate(target, PROMPTS, draft=draft, gamma=3, max_new_tokens=12, seed=5, mesh=mesh, sampling=MIXED)
    assert mixed.tokens == ref[drafter]


def test_params_and_caches_are_really_split(target):
    mesh = make_mesh(2, 4)
    module = prepare_for_mesh(target.module, mesh)
    assert module.config.num_kv_heads == 4  # 2 kv heads repeated up to the model axis
    lm, params = LM.split(module)
    plan = Plan()
    placed = place(params, param_shardings(params, mesh, DEFAULT_RULES, plan))
    shard = {"/".join(map(str, path)): v.value.addressable_shards[0].data.shape
             for path, v in nnx.to_flat_state(placed)}
    assert shard["blocks/q"] == (2, 32, 2, 8)  # [L, D, N/4, H]
    assert shard["blocks/k"] == (2, 32, 1, 8)  # [L, D, K'/4, H]: one kv head per device
    assert shard["blocks/up"] == (2, 32, 16)  # [L, D, F/4]
    assert shard["blocks/down"] == (2, 16, 32)
    assert shard["blocks/o"] == (2, 2, 8, 32)
    assert shard["embed"] == (16, 32)  # [V/4, D]
    assert shard["lm_head"] == (32, 16)
    assert shard["blocks/attn_norm/scale"] == (2, 32)  # norms replicated
    assert not plan.fallbacks

    # the compiled program's state: caches split over data (batch) and model (kv heads)
    api.generate(target, PROMPTS, draft="layerskip:1", gamma=3, max_new_tokens=12, mesh=mesh)
    program = next(p for p in sampler.COMPILED.table.values()
                   if p.mesh is mesh and p.decoder.drafter is not None and p.decoder.drafter.name == "layerskip")
    state_sh = program.run.output_shardings
    cache_shape = (2, 8, 16 + 12 + 5, 4, 8)
    assert state_sh.cache.k.spec == P(None, "data", None, "model", None)
    assert state_sh.cache.k.shard_shape(cache_shape) == (2, 4, 33, 1, 8)
    assert state_sh.tokens.spec == P("data", None)


def test_a_draft_models_cache_follows_the_draft_rules(target):
    # 2 kv heads on a model axis of 2 could be split: the target's are, the draft model's are not
    # (the default draft rules replicate a draft model over `model`)
    mesh = make_mesh(4, 2)
    api.generate(target, PROMPTS, draft=gqa_model(seed=3, layers=1), gamma=3, max_new_tokens=4, mesh=mesh)
    program = next(p for p in sampler.COMPILED.table.values()
                   if p.mesh is mesh and p.decoder.drafter is not None and p.decoder.drafter.name == "model")
    assert program.run.output_shardings.draft.k.spec == P(None, "data", None, None, None)
    assert program.run.output_shardings.cache.k.spec == P(None, "data", None, "model", None)


def test_uneven_dimensions_fall_back_to_replication():
    model = gqa_model(kv_heads=2)
    mesh = make_mesh(1, 8)
    cfg = model.module.config
    plan = Plan()
    # without repeating kv heads, 2 kv heads cannot be split 8 ways: they are replicated
    param_shardings(LM.split(model.module)[1], mesh, DEFAULT_RULES, plan)
    assert any("kv_heads=2 not divisible by model=8" in f for f in plan.fallbacks)
    assert cfg.num_kv_heads == 2


def test_repeated_kv_heads_compute_the_same_function():
    model = gqa_model()
    wide = model.module.with_kv_heads(8)
    tokens = jnp.asarray([[3, 1, 4, 1, 5, 9, 2, 6]])
    pos = jnp.arange(8)[None]
    a, _ = model.module(tokens, pos, model.module.init_cache(1, 8))
    b, _ = wide(tokens, pos, wide.init_cache(1, 8))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert wide.init_cache(1, 8).k.shape[3] == 8


def test_rules_mapping_two_axes_of_one_array_to_one_mesh_axis_are_refused(target):
    mesh = make_mesh(2, 4)
    bad = tuple((k, "model" if k == "embed" else v) for k, v in DEFAULT_RULES)
    with pytest.raises(ShardingRuleError, match=r"rules map both '\w+' and '\w+' of [\w/]+ \("):
        param_shardings(LM.split(target.module)[1], mesh, bad)
    bad_state = tuple((k, "data" if k == "seq" else v) for k, v in DEFAULT_RULES)
    cache = KVCache.zeros(layers=1, batch=8, size=16, kv_heads=2, head_dim=4)
    with pytest.raises(ShardingRuleError, match="'batch' and 'seq'"):
        tree_shardings(cache, mesh, bad_state)
    tree_shardings(cache, mesh, DEFAULT_RULES)  # the defaults are fine


def test_state_shardings_come_from_declared_axes_and_undeclared_arrays_are_replicated():
    mesh = make_mesh(2, 4)
    cache = KVCache.zeros(layers=1, batch=8, size=16, kv_heads=4, head_dim=4)
    tree = {"cache": cache, "mine": jnp.zeros((8, 3))}  # a drafter's own array, declared by nobody
    sh = tree_shardings(tree, mesh, DEFAULT_RULES)
    assert sh["cache"].k.spec == P(None, "data", None, "model", None)
    assert sh["mine"].spec == P(None, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # make test-all; kept out of make test for its 12-minute budget
def test_two_processes_generate_the_same_tokens_as_one(hf_dir):
    prompts = ["hello world", "the quick brown fox", "lazy dog", "over the"]
    base = [sys.executable, "-m", "specjax.cli", "generate", "--target", str(hf_dir), "--max-new-tokens", "8",
            "--json", "--drafter", "layerskip:2", "--gamma", "3"]
    for p in prompts:
        base += ["--prompt", p]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    single = subprocess.run(base + ["--local-devices", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    single_out = json.loads(single.stdout.strip().splitlines()[-1])
    want = single_out["tokens"]

    port = _free_port()
    procs = [subprocess.Popen(base + ["--mesh", "2x2", "--coordinator", f"localhost:{port}", "--num-processes", "2",
                                      "--process-id", str(i), "--local-devices", "2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[1])
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert got[0]["tokens"] == want and got[1]["tokens"] == want
    assert got[0]["stats"]["acceptance_rate"] == got[1]["stats"]["acceptance_rate"] == single_out["stats"][
        "acceptance_rate"]
