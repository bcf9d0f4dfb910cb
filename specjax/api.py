"""`specjax.generate`: the one-call convenience entry point (a `specjax.sampler.Sampler` per call;
compiled programs are cached across calls, so a repeated bucket does not compile again)."""

from __future__ import annotations

from typing import Sequence

from specjax.config import SamplingConfig
from specjax.sampler import GenerateResult, Sampler

__all__ = ["GenerateResult", "generate"]


def generate(target, prompts, *, draft=None, sampling: SamplingConfig | Sequence[SamplingConfig] | None = None,
             gamma: int | str = 4, max_new_tokens: int | Sequence[int] = 64, seed: int | Sequence[int] = 0,
             chat: bool = False,
             eos_ids: Sequence[int] | None = None, mesh=None, rules=None, draft_rules=None,
             load_model=None, load_head=None, verify: str = "batched", gamma_max: int | None = None,
             policy: dict | None = None, calibration: str | None = None) -> GenerateResult:
    """Generate continuations of `prompts` (strings, or lists of token ids) with `target`.

    draft: None for plain autoregressive decoding; a loaded draft model with the target's tokenizer;
    "layerskip:K" (the target's first K blocks; or "layerskip:0-9,20-29", ":own" for a private
    cache); "ngram:NMAX[:NMIN]" (prompt lookup); "model:NAME" with `load_model`; a loaded EAGLE-3
    head (`specjax.models.load_eagle(DIR)`, or "eagle:DIR" with `load_head`); or a (drafter, params)
    pair (see `specjax.drafters.registry`).
    sampling: temperature / top-k / top-p (greedy by default), one SamplingConfig for all prompts or
    a list with one per prompt; max_new_tokens and seed likewise (seed=[s0, s1, ...] makes each row
    reproducible alone, see `Sampler`). gamma: proposals per round (G), or "auto" (each round picks
    its window up to gamma_max inside the loop: `specjax.policy`; policy / calibration as `Sampler`).
    mesh: a `specjax.sharding.make_mesh(data, model)` mesh to shard params, caches and state over
    (rules / draft_rules: logical-axis tables, see `specjax.sharding`). verify: "batched" or
    "stepwise" (bit-for-bit equal to plain greedy decoding in any dtype, slower; see `Sampler`).
    Returns tokens and text per prompt, statistics (acceptance, tokens per round, memory) and
    timings (compile time apart from run time).
    """
    sampler = Sampler(target, draft, gamma=gamma, eos_ids=eos_ids, mesh=mesh, rules=rules, draft_rules=draft_rules,
                      load_model=load_model, load_head=load_head, verify=verify, gamma_max=gamma_max, policy=policy,
                      calibration=calibration)
    return sampler(prompts, sampling=sampling, max_new_tokens=max_new_tokens, seed=seed, chat=chat)
