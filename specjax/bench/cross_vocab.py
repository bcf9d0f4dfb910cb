"""A draft with another tokenizer, measured: specjax's token-level intersection beside transformers'
universal assisted generation, on the same pair, prompts and lengths.

    python -m specjax.bench.cross_vocab [--target gemma3-270m] [--draft smollm2-135m-instruct]
        [--suites humaneval,chat] [--count 4] [--max-new-tokens 64] [--gammas 2,4] [--repeats 2]
        [--no-peers] [--json FILE]

specjax: plain greedy decoding and the draft at every G of --gammas, batch 1, EOS ignored, every
sampler's calls interleaved (`runner.measure_many`); per G the acceptance rate a, acceptance by draft
position, tokens per round, c (one proposal / one target step, `measure.drafter_time`), v (the
target's (G+1)-token verify / its one-token step, `measure.StepTimer`), the predicted speedup
tau(a, G) / (G c + v) and the measured one (whole calls, prefill included).
transformers (PyTorch, the same GGUF files): `generate(do_sample=False)` and
`generate(assistant_model=draft, tokenizer=..., assistant_tokenizer=...)` (universal assisted
generation, with the assistant's own schedule and with a constant window of each G), on the same
token ids, EOS ignored (`peers.measure_generate`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    from specjax import metrics
    from specjax.bench import measure as micro
    from specjax.bench.prompts import load_suite
    from specjax.bench.runner import measure_many
    from specjax.config import GREEDY
    from specjax.models import load
    from specjax.models.hub import resolve
    from specjax.sampler import Sampler, encode_prompts

    p = argparse.ArgumentParser(prog="python -m specjax.bench.cross_vocab", description=__doc__.split("\n")[0])
    p.add_argument("--target", default="gemma3-270m")
    p.add_argument("--draft", default="smollm2-135m-instruct")
    p.add_argument("--suites", default="humaneval,chat")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--gammas", default="2,4")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-peers", action="store_true", help="leave transformers out")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    gammas = [int(g) for g in args.gammas.split(",")]
    started = time.perf_counter()

    target, draft = load(args.target, progress=False), load(args.draft, progress=False)
    plain = Sampler(target, None, eos_ids=())
    samplers = {g: Sampler(target, draft, gamma=g, eos_ids=()) for g in gammas}
    vocab = samplers[gammas[0]].drafter.vocab.summary()
    print(f"vocabulary map: {vocab}", flush=True)
    steps = micro.StepTimer(plain.lm, plain.params, batch=1).measure(gammas)
    costs = {g: micro.drafter_time(s, batch=1, sampling=GREEDY, target_step_s=steps["target_step_s"])["c"]
             for g, s in samplers.items()}
    print(f"target step {steps['target_step_s'] * 1000:.1f} ms; v {steps['v']}; c {costs}", flush=True)
    out = {"target": args.target, "draft": args.draft, "vocabulary": vocab, "target_step_ms": steps["target_step_s"] * 1e3,
           "v": steps["v"], "c": costs, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "suites": {}}

    peers = None
    if not args.no_peers:
        from transformers import AutoTokenizer

        from specjax.bench.peers import load_hf

        t_path, d_path = resolve(args.target, progress=False), resolve(args.draft, progress=False)
        peers = (load_hf(t_path), load_hf(d_path), AutoTokenizer.from_pretrained(t_path.parent, gguf_file=t_path.name),
                 AutoTokenizer.from_pretrained(d_path.parent, gguf_file=d_path.name))

    for suite in args.suites.split(","):
        texts, chat = load_suite(suite, args.count)
        if chat and not target.tokenizer.chat_template:
            chat = False
        timed = measure_many([plain] + [samplers[g] for g in gammas], texts, batch=1,
                             max_new_tokens=args.max_new_tokens, repeats=args.repeats, chat=chat)
        base = timed[0]["tokens_per_s"]
        row = {"chat": chat, "plain_tokens_per_s": base, "specjax": {}}
        for g, point in zip(gammas, timed[1:]):
            a = point["acceptance_rate"]
            row["specjax"][g] = {
                "tokens_per_s": point["tokens_per_s"], "speedup": point["tokens_per_s"] / base, "a": a,
                "acceptance_by_position": point["acceptance_by_position"],
                "tokens_per_round": point["mean_tokens_per_round"],
                "predicted": metrics.predicted_speedup(a, g, costs[g], steps["v"][g]) if a is not None else None}
            print(f"{suite} specjax G={g}: {point['tokens_per_s']:.1f} tok/s ({point['tokens_per_s'] / base:.2f}x of "
                  f"plain {base:.1f}), a {a:.3f}, by position {[round(x, 2) for x in point['acceptance_by_position']]}, "
                  f"{point['mean_tokens_per_round']:.2f} tokens/round, predicted "
                  f"{row['specjax'][g]['predicted']:.2f}x", flush=True)
        if peers is not None:
            from specjax.bench.peers import measure_generate

            hf_target, hf_draft, t_tok, d_tok = peers
            ids = encode_prompts(target.tokenizer, texts, chat=chat)
            common = dict(max_new_tokens=args.max_new_tokens, repeats=args.repeats)
            hf_plain = measure_generate(hf_target, ids, **common)["tokens_per_s"]
            row["transformers"] = {"plain_tokens_per_s": hf_plain}
            cfg = hf_draft.generation_config
            own = {"num_assistant_tokens": cfg.num_assistant_tokens,
                   "num_assistant_tokens_schedule": cfg.num_assistant_tokens_schedule}
            runs = {"assistant, transformers' default window": own}
            runs.update({f"assistant G={g}": {"num_assistant_tokens": g, "num_assistant_tokens_schedule": "constant"}
                         for g in gammas})
            for name, schedule in runs.items():
                cfg.num_assistant_tokens = schedule["num_assistant_tokens"]
                cfg.num_assistant_tokens_schedule = schedule["num_assistant_tokens_schedule"]
                got = measure_generate(hf_target, ids, assistant_model=hf_draft, tokenizer=t_tok,
                                       assistant_tokenizer=d_tok, **common)["tokens_per_s"]
                row["transformers"][name] = {"tokens_per_s": got, "speedup": got / hf_plain}
                print(f"{suite} transformers {name}: {got:.1f} tok/s ({got / hf_plain:.2f}x of its plain "
                      f"{hf_plain:.1f}; specjax plain is {base / hf_plain:.2f}x transformers plain)", flush=True)
        out["suites"][suite] = row
    out["wall_s"] = time.perf_counter() - started
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
