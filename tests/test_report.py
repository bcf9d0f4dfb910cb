"""Memory and statistics reports."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_lm
from flax import nnx

from specjax import api, report


def test_memory_report_counts_caches_and_params_by_hand():
    target = tiny_lm(0, layers=4)  # dim 32, 2 kv heads of 8, vocab 64, float32
    kv_per_layer = 2 * (2 * 64 * 2 * 8) * 4  # k and v, [B=2, S=64, K=2, H=8] float32
    mem = report.memory_report(target, batch=2, length=64)
    assert mem["target_cache_bytes"] == 4 * kv_per_layer
    assert mem["target_param_bytes"] == sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(nnx.state(target.module)))
    mem = report.memory_report(target, "layerskip:0,3:own", batch=2, length=64)
    assert mem["draft_cache_bytes"] == 2 * kv_per_layer and mem["draft_param_bytes"] == 0
    mem = report.memory_report(target, "layerskip:0,3", batch=2, length=64)
    assert mem["speculation_overhead_bytes"] == 0
    draft = tiny_lm(1, layers=1)
    mem = report.memory_report(target, draft, batch=2, length=64)
    assert mem["draft_cache_bytes"] == kv_per_layer
    assert mem["draft_param_bytes"] == sum(x.nbytes for x in jax.tree.leaves(nnx.state(draft.module)))
    assert mem["speculation_overhead_bytes"] == mem["draft_cache_bytes"] + mem["draft_param_bytes"]


def test_generate_reports_statistics_that_add_up():
    target = tiny_lm(0)
    prompts = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [1, 2, 3]]
    out = api.generate(target, prompts, draft="layerskip:1", gamma=3, max_new_tokens=12)
    s = out.stats
    assert s["new_tokens"] == [len(t) for t in out.tokens] == [12, 12]
    # every round emits its accepted proposals plus one token, the prefill the first token; only the
    # last round of a row can be cut by the budget, by at most G tokens
    for a, r, n in zip(s["accepted"], s["rounds"], s["new_tokens"]):
        assert n <= a + r + 1 <= n + 3
    assert s["target_forward_passes"] == max(s["rounds"]) + 1
    assert sum(s["accepted"]) <= sum(s["drafted"]) == 3 * sum(s["rounds"])
    assert out.stats["memory"]["batch"] == 2


def test_statistics_of_an_autoregressive_state_have_no_acceptance():
    class S:
        lengths = jnp.asarray([9, 7])
        prompt_lengths = jnp.asarray([4, 5])
        steps = jnp.asarray(4)

    stats = report.statistics(S, 2, speculative=False)
    assert stats == {"new_tokens": [5, 2], "target_forward_passes": 5}
