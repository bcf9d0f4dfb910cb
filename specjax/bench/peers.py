"""Peers measured in the same run: transformers (PyTorch, CPU here) on the same model, prompts and lengths.

  greedy          model.generate(do_sample=False)
  prompt lookup   model.generate(prompt_lookup_num_tokens=G)  (transformers' n-gram assisted generation)
  assistant       model.generate(assistant_model=draft)       (a draft model in HF form: the target's
                  first K layers, the same draft specjax's `model:truncate:K` uses)

Timing: one warm-up call per prompt, then `repeats` timed calls; the median over repeats of total
tokens / total seconds. EOS is ignored on both sides so every call emits exactly max_new_tokens.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path


def load_hf(path, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    where, extra = (path.parent, {"gguf_file": path.name}) if path.suffix == ".gguf" else (path, {})
    return AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype), **extra).eval()


def truncated_copy(model, layers: int):
    """The HF model's first `layers` decoder layers with its final norm and head (a copy)."""
    small = copy.deepcopy(model)
    small.model.layers = small.model.layers[:layers]
    small.config.num_hidden_layers = layers
    if getattr(small.config, "layer_types", None):
        small.config.layer_types = small.config.layer_types[:layers]
    return small


def measure_generate(model, prompts_ids: list[list[int]], *, max_new_tokens: int, repeats: int, **kwargs) -> dict:
    """`model.generate` on each prompt (batch 1), greedy, `repeats` times after a warm-up ->
    {"tokens_per_s": median, "tokens_per_s_runs": per repeat, "tokens": emitted in one repeat}.
    kwargs go to `generate` (prompt lookup, assistant model)."""
    import torch

    def run(ids):
        with torch.no_grad():
            x = torch.tensor([ids])
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=None, pad_token_id=0, **kwargs)
        return out.shape[1] - len(ids)

    for ids in prompts_ids:  # warm-up
        run(ids)
    per_repeat, tokens = [], 0
    for _ in range(repeats):
        tokens, seconds = 0, 0.0
        for ids in prompts_ids:
            start = time.perf_counter()
            tokens += run(ids)
            seconds += time.perf_counter() - start
        per_repeat.append(tokens / seconds)
    return {"tokens_per_s": statistics.median(per_repeat), "tokens_per_s_runs": per_repeat, "tokens": tokens}
