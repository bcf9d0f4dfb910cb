"""Speculative decoding on the built-in SmolLM2-135M-Instruct with each drafter.

    python examples/generate.py
"""

import specjax
from specjax.models import load

target = load("smollm2-135m-instruct")
prompt = ["Complete this Python function: def is_palindrome(s: str) -> bool:"]
baseline = specjax.generate(target, prompt, chat=True, max_new_tokens=96)
print(baseline.text[0])
print(f"autoregressive: {baseline.timing['tokens_per_s']:.1f} tokens/s")
for drafter in ["ngram:3", "layerskip:0-11,18-29"]:
    out = specjax.generate(target, prompt, chat=True, draft=drafter, gamma=4, max_new_tokens=96)
    assert out.tokens == baseline.tokens  # greedy speculative decoding is exact
    s = out.stats
    print(f"{drafter}: {out.timing['tokens_per_s']:.1f} tokens/s, acceptance {s['acceptance_rate']:.2f}, "
          f"{s['mean_tokens_per_round']:.2f} tokens per round, draft memory {s['memory']['speculation_overhead_bytes']} B")
