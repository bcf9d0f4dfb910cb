"""What an EAGLE-3 head costs before it is trained: c and v on a target, per draft vocabulary size.

    python -m specjax.bench.eagle_cost [--target smollm2-135m-instruct] [--vocab 8192 --vocab 16384 --vocab 0]
        [--gamma 2 --gamma 4 --gamma 6] [--batch 1] [--dtype float32] [--repeats 20] [--json out.json]

A random head of the usual shape for the target (its width, heads and MLP; taps 2, L // 2, L - 3)
with a draft vocabulary of N ids (0: the target's whole vocabulary). Per G, on a cache of 512 slots
with 256 committed tokens (`specjax.bench.measure`):

  target step   the target's one-token forward
  v             the (G+1)-token verify pass *with the head's taps* / the one-token step (without taps, as
                plain decoding runs it)
  propose       the drafter's `propose` (G proposals: G head logits, G - 1 head steps)
  observe       the drafter's `observe` (one head pass over the G + 1 verified positions)
  c             (propose + observe) / (G x target step): everything the head adds to a round, per
                proposal, in target steps
  break-even a  the acceptance rate at which tau(a) / (G c + v) = 1 (speculation pays above it)

Each figure is the median of `repeats` timed calls after a compiling call; propose and observe are
timed as 8 calls inside one `lax.fori_loop`, as `measure.drafter_time` does.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

VOCABS = (8192, 16384, 0)
GAMMAS = (2, 4, 6)


def break_even(c: float, v: float, gamma: int) -> float | None:
    """The acceptance rate a with (1 - a^(G+1)) / (1 - a) = G c + v (None when even a = 1 loses)."""
    cost = gamma * c + v
    if cost > gamma + 1:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        tau = sum(mid ** i for i in range(gamma + 1))
        lo, hi = (mid, hi) if tau < cost else (lo, mid)
    return hi


def run(target: str = "smollm2-135m-instruct", vocabs=VOCABS, gammas=GAMMAS, batch: int = 1, dtype: str = "float32",
        repeats: int = 20) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from specjax import loop
    from specjax.bench import measure as micro
    from specjax.config import SamplingConfig
    from specjax.drafters.base import Observation
    from specjax.lm import LM
    from specjax.models import head_config_for, load, random_head
    from specjax.sampler import Sampler

    started = time.perf_counter()
    model = load(target, dtype=dtype, progress=False)
    lm, params = LM.split(model.module)
    V = model.module.config.vocab_size
    rows = []
    for n in vocabs:
        n = n or V
        ids = np.sort(np.random.default_rng(0).choice(V, n, replace=False))
        head = random_head(head_config_for(model.module.config, draft_vocab_size=n), dtype=dtype, target_ids=ids)
        for gamma in gammas:
            sampler = Sampler(model, head, gamma=gamma, eos_ids=())
            drafter = sampler.drafter
            taps = drafter.taps
            size, ctx = micro.SIZE, micro.CONTEXT

            @functools.partial(jax.jit, static_argnames=("taps",))
            def forward(params, cache, tokens_bt, taps=()):
                positions_bt = jnp.broadcast_to(ctx - 1 + jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
                return lm.forward(params, tokens_bt, positions_bt, cache, taps=taps)

            cache = lm.init_cache(params, batch, size)
            one, many = jnp.ones((batch, 1), jnp.int32), jnp.ones((batch, gamma + 1), jnp.int32)
            t1 = micro._median_time(lambda: forward(params, cache, one), repeats=repeats)
            tv = micro._median_time(lambda: forward(params, cache, many, taps), repeats=repeats)
            propose = micro.drafter_time(sampler, batch=batch, sampling=SamplingConfig(), target_step_s=t1,
                                         repeats=repeats)["propose_s"]

            dec = loop.Decoder(lm=lm, size=size, drafter=drafter, gamma=gamma)
            prompt = micro.context_tokens(batch, ctx, V)
            state = jax.jit(dec.start)(params, sampler.draft_params, loop.Batch.make(
                prompt, np.full((batch,), ctx, np.int32), max_new_tokens=size - ctx - gamma - 2))
            _, _, taps_nbtd = forward(params, cache, many, taps)
            obs = Observation(tokens=many, proposed=jnp.ones((batch, gamma), bool),
                              positions=jnp.broadcast_to(ctx - 1 + jnp.arange(gamma + 1), (batch, gamma + 1)),
                              taps=taps_nbtd, accepted=jnp.full((batch,), gamma), committed=jnp.full((batch,), gamma + 1),
                              next_tokens=jnp.ones((batch,), jnp.int32))

            @jax.jit
            def observe(draft_params, params, dstate):
                def body(_, d):
                    return drafter.observe(draft_params, params, d, obs)

                return jax.lax.fori_loop(0, micro.PROPOSALS_PER_CALL, body, dstate)

            t_obs = micro._median_time(observe, sampler.draft_params, params, state.draft,
                                       repeats=max(3, repeats // micro.PROPOSALS_PER_CALL)) / micro.PROPOSALS_PER_CALL
            c = (propose + t_obs) / (gamma * t1)
            v = tv / t1
            rows.append({"draft_vocab": n, "gamma": gamma, "target_step_ms": 1e3 * t1, "verify_ms": 1e3 * tv, "v": v,
                         "propose_ms": 1e3 * propose, "observe_ms": 1e3 * t_obs, "c": c,
                         "c_propose_only": propose / (gamma * t1), "break_even_a": break_even(c, v, gamma)})
            print(_row(rows[-1]), file=sys.stderr, flush=True)
    import jax as _jax

    return {"target": target, "dtype": dtype, "batch": batch, "backend": _jax.default_backend(),
            "device": str(_jax.devices()[0].device_kind), "rows": rows, "seconds": time.perf_counter() - started}


def _row(r: dict) -> str:
    be = "-" if r["break_even_a"] is None else f"{r['break_even_a']:.2f}"
    return (f"| {r['draft_vocab']} | {r['gamma']} | {r['target_step_ms']:.1f} | {r['v']:.2f} | {r['propose_ms']:.2f} | "
            f"{r['observe_ms']:.2f} | {r['c']:.3f} | {r['c_propose_only']:.3f} | {be} |")


def table(report: dict) -> str:
    head = ("| draft vocab | G | target step (ms) | v | propose (ms) | observe (ms) | c | c (propose only) | "
            "break-even a |\n|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + [_row(r) for r in report["rows"]])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m specjax.bench.eagle_cost", description=__doc__.splitlines()[0])
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--vocab", type=int, action="append", help="draft vocabulary sizes (0 = the target's); "
                   "default 8192, 16384, 0")
    p.add_argument("--gamma", type=int, action="append", help="default 2, 4, 6")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args(argv)
    report = run(args.target, tuple(args.vocab or VOCABS), tuple(args.gamma or GAMMAS), args.batch, args.dtype,
                 args.repeats)
    from specjax.bench import measure

    measure.emit(report, table(report), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
