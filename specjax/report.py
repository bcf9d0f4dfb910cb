"""Memory and statistics reports: what a decode cost in bytes, and what its speculation achieved."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from specjax import metrics
from specjax.lm import LM


def nbytes(tree) -> int:
    """Bytes of every array (or ShapeDtypeStruct) in a pytree."""
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def memory(lm: LM, params, drafter=None, draft_params=None, *, batch: int = 1, length: int = 2048,
           ring_slack: int | None = None) -> dict:
    """Parameter and KV-cache bytes of target and drafter for `batch` rows of `length` slots
    (ring_slack as the decoder passes it: sliding-window layers in ring buffers, their bytes apart as
    `target_ring_bytes`).

    The speculation overhead is the drafter's parameters plus its state (zero for prompt lookup and
    for layer skip with the shared cache). Nothing is allocated: shapes come from `jax.eval_shape`."""
    target_cache = jax.eval_shape(lambda p: lm.init_cache(p, batch, length, ring_slack=ring_slack), params)
    rings = [getattr(target_cache, name, None) for name in ("ring_k", "ring_v")]
    report = {
        "batch": batch, "length": length,
        "target_param_bytes": nbytes(params), "target_cache_bytes": nbytes(target_cache),
        "target_ring_bytes": nbytes([r for r in rings if r is not None]),
        "draft_param_bytes": 0, "draft_cache_bytes": 0,
    }
    if drafter is not None:
        report["draft_param_bytes"] = nbytes(draft_params)
        draft_state = jax.eval_shape(lambda d, p: drafter.init(d, p, batch, length), draft_params, params)
        report["draft_cache_bytes"] = nbytes(draft_state)
        vocab = getattr(drafter, "vocab", None)
        if vocab is not None:  # a draft with another tokenizer: its vocabulary map (in draft_param_bytes)
            report["draft_vocab_map_bytes"] = int(vocab.nbytes)
    report["speculation_overhead_bytes"] = report["draft_param_bytes"] + report["draft_cache_bytes"]
    return report


def device_memory_bytes() -> int | None:
    """Memory of the first device: the allocator's limit where JAX reports one (GPU, TPU), the
    machine's physical memory for the CPU backend, else None."""
    import os

    device = jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # backends without memory statistics
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def request_bytes(lm: LM, params, drafter, draft_params, *, batch: int, prompt: int, length: int) -> dict:
    """A lower estimate of the memory one decode call needs: params, the KV caches and the drafter's
    state (`memory`), plus a bound on the prefill's largest transient, one layer's float32 attention
    scores and softmax over a prefill pass [B, N, min(P, chunk), S] (the layers run one at a time, a
    long prompt in chunks of `PREFILL_CHUNK`; blocked attention needs less)."""
    from specjax.lm import PREFILL_CHUNK

    m = memory(lm, params, drafter, draft_params, batch=batch, length=length)
    scores = 2 * batch * lm.config.num_heads * min(prompt, PREFILL_CHUNK) * length * 4
    total = m["target_param_bytes"] + m["target_cache_bytes"] + m["speculation_overhead_bytes"] + scores
    return {**m, "prefill_scores_bytes": scores, "total_bytes": total}


def memory_report(target, draft=None, *, batch: int = 1, length: int = 2048, load_model=None,
                  load_head=None) -> dict:
    """`memory` for a loaded target and a drafter given as `generate` takes it (string, model or pair)."""
    from specjax.drafters import registry

    lm, params = LM.split(target.module)
    if draft is None:
        return memory(lm, params, batch=batch, length=length)
    resolved = registry.resolve(draft, target, load_model=load_model, load_head=load_head)
    return memory(lm, params, resolved.drafter, resolved.params, batch=batch, length=length)


COUNTERS = ("rounds", "drafted", "accepted", "accepted_at", "reached_at")  # the per-row fields of SpecStats


def summarize_rounds(counters: dict, new_tokens) -> dict[str, Any]:
    """`metrics.summarize` of per-row speculation counters (`COUNTERS`) and new tokens per row; the
    prefill's first token is not a round's, so each row's rounds emitted new_tokens - 1 tokens."""
    emitted = np.maximum(np.asarray(new_tokens) - 1, 0)
    return metrics.summarize(*(counters[name] for name in COUNTERS), emitted)


def statistics(state, rows: int, *, speculative: bool) -> dict[str, Any]:
    """Counters of a finished decode state (host numpy arrays) for its first `rows` rows -> a dict:
    new tokens per row, target forward passes, and for speculative decoding `metrics.summarize`."""
    lengths, plen = np.asarray(state.lengths), np.asarray(state.prompt_lengths)
    new_tokens = (lengths - plen)[:rows].astype(int).tolist()
    stats: dict[str, Any] = {"new_tokens": new_tokens, "target_forward_passes": int(state.steps) + 1}
    if speculative:
        counters = {name: np.asarray(getattr(state.stats, name))[:rows] for name in COUNTERS}
        stats.update(summarize_rounds(counters, new_tokens))
        adapt = getattr(state, "adapt", None)
        if adapt is not None:  # gamma="auto": the windows the policy chose
            rounds = int(np.sum(counters["rounds"]))
            stats["mean_window"] = float(np.sum(np.asarray(adapt.width)[:rows]) / rounds) if rounds else None
            stats["plain_rounds"] = int(np.sum(np.asarray(adapt.plain)[:rows]))
    return stats
