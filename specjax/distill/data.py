"""Distillation data: prompts, the target's own responses, and per-token targets stored memory-mapped.

Axes: N tokens in the whole data set, n tapped layers, E the target's width, k the stored top-k.

Prompt sources (`load_prompts`): a YAML file (`prompts:` list, optional `chat:`), a JSONL file (one
object per line with a `prompt` or `text` field, or a bare string), a plain-text file (one prompt
per line), or a shipped suite given as `{suite: NAME, skip: S, count: C}` (see
`specjax.bench.prompts`). Responses come from the target itself through specjax's batched decoding
(`generate_responses`: one pass per temperature, seeds and samples per prompt configurable).

Self-written prompts (`generate_self_prompts`): a chat model is given its chat template up to the
point where a user's message begins and writes the message itself, sampled at a high temperature,
ending at its end-of-turn token (the Magpie recipe, Xu et al. 2024). That gives as many varied
prompts as wanted, from the target's own idea of what users ask, with no data set at all.

`extract` runs the target once over every (prompt + response) sequence and writes, under a
directory, `.npy` files opened memory-mapped, so data sets larger than RAM work:

  tokens.npy        [N] int32
  features.npy      [N, n*E] float16   the tapped hidden states, concatenated low layer first
  topk_ids.npy      [N, k] int32       the target's k most likely next tokens at each position, best first
  topk_logits.npy   [N, k] float16     their logits
  index.json        sequence offsets, prompt lengths, the taps, k, the target's name and vocabulary

`Dataset` opens such a directory and cuts fixed-shape training batches from it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from specjax.errors import ConfigError


def load_prompts(sources: Sequence[Any]) -> list[tuple[str, bool]]:
    """Every prompt of `sources`, in order -> [(text, apply the chat template)]."""
    out: list[tuple[str, bool]] = []
    for src in sources:
        if isinstance(src, dict):
            from specjax.bench.prompts import load_suite

            if "suite" not in src:
                raise ConfigError(f"prompt source {src!r}: a mapping needs 'suite' (and optional skip, count)")
            texts, chat = load_suite(src["suite"])
            skip, count = int(src.get("skip", 0)), src.get("count")
            texts = texts[skip:] if count is None else texts[skip:skip + int(count)]
            out += [(t, chat) for t in texts]
            continue
        path = Path(src)
        if not path.is_file():
            raise ConfigError(f"prompt file {str(path)!r} does not exist")
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text()) or {}
            texts, chat = data.get("prompts"), bool(data.get("chat", True))
            if not texts or not all(isinstance(t, str) for t in texts):
                raise ConfigError(f"{path}: 'prompts' must be a non-empty list of strings")
            out += [(t, chat) for t in texts]
        elif path.suffix == ".jsonl":
            for i, line in enumerate(path.read_text().splitlines()):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{path}, line {i + 1}: invalid JSON ({err})") from err
                text = item if isinstance(item, str) else (item.get("prompt") or item.get("text"))
                if not isinstance(text, str):
                    raise ConfigError(f"{path}, line {i + 1}: expected a string or an object with 'prompt' or 'text'")
                out.append((text, True))
        else:
            out += [(line, True) for line in path.read_text().splitlines() if line.strip()]
    if not out:
        raise ConfigError("no prompts in the given sources")
    return out


def generate_responses(target, prompts: list[tuple[str, bool]], *, samples: int = 1,
                       temperature: float | Sequence[float] = 0.0, seed: int = 0, max_new_tokens: int = 256,
                       batch: int = 16, progress: bool = True) -> list[tuple[list[int], list[int]]]:
    """The target's responses with specjax's batched decoding -> [(prompt ids, response ids)].

    One pass over the prompts per entry of `temperature` (a number or a list): a greedy pass (0)
    answers each prompt once, a sampled pass `samples` times, sample s of prompt i in pass j drawing
    with seed (seed, s, i) for the first pass and (seed, s, i, j) for later ones. EOS ends a response.
    Jobs of a batch share a chat flag and have similar prompt lengths (fewer padded slots)."""
    from specjax.config import SamplingConfig
    from specjax.sampler import Sampler

    temps = [float(temperature)] if isinstance(temperature, (int, float)) else [float(t) for t in temperature]
    if not temps or any(t < 0 for t in temps):
        raise ConfigError(f"temperature must be a number >= 0 or a non-empty list of them, got {temperature!r}")
    sampler = Sampler(target, None)
    jobs = []  # (prompt index, sample, pass)
    for j, temp in enumerate(temps):
        jobs += [(i, s, j) for s in range(samples if temp > 0 else 1) for i in range(len(prompts))]
    # group by chat flag, then by prompt length, so a batch pads little
    jobs.sort(key=lambda job: (prompts[job[0]][1], len(prompts[job[0]][0])))
    out: list[tuple[list[int], list[int]]] = []
    bar = _progress(len(jobs), "generating", progress)
    start = 0
    while start < len(jobs):
        chat = prompts[jobs[start][0]][1]
        part = [job for job in jobs[start:start + batch] if prompts[job[0]][1] == chat]
        start += len(part)
        seeds = [_seed(seed, s, i, *([j] if j else [])) for i, s, j in part]
        sampling = [SamplingConfig(temperature=temps[j]) if temps[j] > 0 else SamplingConfig() for _, _, j in part]
        result = sampler([prompts[i][0] for i, _, _ in part], sampling=sampling, max_new_tokens=max_new_tokens,
                         seed=seeds, chat=chat)
        out += [(list(p), list(t)) for p, t in zip(result.prompt_tokens, result.tokens)]
        bar.update(len(part))
    bar.close()
    return out


def user_turn_prefix(tokenizer) -> list[int]:
    """The token ids of the chat template rendered up to where a user's message begins (with the
    template's default system turn, if it has one)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError("self-written prompts need a chat model: the target has no chat template")
    marker = "SPECJAX_USER_MESSAGE"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], add_generation_prompt=False)
    if marker not in text:
        raise ConfigError("the target's chat template does not render the user's message; cannot write prompts")
    ids = tokenizer.encode(text[:text.index(marker)], add_bos=False)
    if not ids:
        raise ConfigError("the target's chat template renders nothing before the user's message")
    return ids


def generate_self_prompts(target, n: int, *, temperature: float = 1.0, top_p: float = 0.95, max_tokens: int = 64,
                          seed: int = 0, batch: int = 16, progress: bool = True) -> list[tuple[str, bool]]:
    """Up to `n` distinct user messages written by the target itself (see the module docstring) ->
    [(text, True)]. Messages that do not end within `max_tokens` (no end-of-turn token), are empty,
    or repeat an earlier one are dropped, so fewer than n may come back."""
    from specjax.config import SamplingConfig
    from specjax.sampler import Sampler

    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"self_prompts must be an integer >= 1, got {n!r}")
    if not temperature > 0 or not 0 < top_p <= 1:
        raise ConfigError(f"self-written prompts are sampled: temperature must be > 0 and top_p in (0, 1], "
                          f"got {temperature}, {top_p}")
    tokenizer = getattr(target, "tokenizer", None)
    prefix = user_turn_prefix(tokenizer)
    eos = list(tokenizer.eos_ids)
    sampler = Sampler(target, None)
    sampling = SamplingConfig.make(temperature, None, top_p)
    seen, out = set(), []
    bar = _progress(n, "writing prompts", progress)
    for start in range(0, n, batch):
        rows = list(range(start, min(n, start + batch)))
        seeds = [_seed(seed, 1, r) for r in rows]
        result = sampler([prefix] * len(rows), sampling=sampling, max_new_tokens=max_tokens, seed=seeds, eos_ids=eos)
        for toks in result.tokens:
            if not toks or toks[-1] not in eos:
                continue
            text = tokenizer.decode(toks[:-1]).strip()
            if text and text not in seen:
                seen.add(text)
                out.append((text, True))
        bar.update(len(rows))
    bar.close()
    return out


def _seed(*parts: int) -> int:
    """A row's decoding seed derived from integers (recipe seed, sample, prompt, ...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="seq", disable=not enabled, dynamic_ncols=True)


def _bucket(n: int, step: int = 64) -> int:
    return -(-n // step) * step


def extract(target, sequences: list[tuple[list[int], list[int]]], directory, *, taps: tuple[int, ...], top_k: int = 64,
            batch: int = 4, bucket: int = 64, name: str = "", progress: bool = True) -> Path:
    """Run the target over every sequence (prompt + response) and write the memory-mapped data set.
    `batch` sequences of similar length per pass, padded to a multiple of `bucket` tokens (each
    padded length is one compiled program: a coarser bucket compiles fewer)."""
    from specjax.lm import LM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lm, params = LM.split(target.module)
    cfg = lm.config
    lengths = [len(p) + len(r) for p, r in sequences]
    N, width = sum(lengths), len(taps) * cfg.dim
    tokens = np.lib.format.open_memmap(directory / "tokens.npy", "w+", np.int32, (N,))
    features = np.lib.format.open_memmap(directory / "features.npy", "w+", np.float16, (N, width))
    topk_ids = np.lib.format.open_memmap(directory / "topk_ids.npy", "w+", np.int32, (N, top_k))
    topk_logits = np.lib.format.open_memmap(directory / "topk_logits.npy", "w+", np.float16, (N, top_k))

    @functools.partial(jax.jit, static_argnames=())
    def run(params, tokens_bt, positions_bt):
        logits_btv, _, taps_nbtd = lm.forward(params, tokens_bt, positions_bt,
                                              lm.init_cache(params, tokens_bt.shape[0], tokens_bt.shape[1]), taps=taps)
        vals, ids = jax.lax.top_k(logits_btv, top_k)
        feats = jnp.concatenate(list(taps_nbtd), axis=-1)
        return feats.astype(jnp.float16), ids, vals.astype(jnp.float16)

    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    order = np.argsort(lengths)  # similar lengths share a padded batch
    bar = _progress(len(sequences), "target features", progress)
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        T = _bucket(max(lengths[r] for r in rows), bucket)
        toks = np.zeros((batch, T), np.int32)
        pos = np.full((batch, T), -1, np.int32)
        for j, r in enumerate(rows):
            seq = sequences[r][0] + sequences[r][1]
            toks[j, :len(seq)] = seq
            pos[j, :len(seq)] = np.arange(len(seq))
        feats, ids, vals = jax.device_get(run(params, jnp.asarray(toks), jnp.asarray(pos)))
        for j, r in enumerate(rows):
            a, n = offsets[r], lengths[r]
            tokens[a:a + n] = toks[j, :n]
            features[a:a + n] = feats[j, :n]
            topk_ids[a:a + n] = ids[j, :n]
            topk_logits[a:a + n] = vals[j, :n]
        bar.update(len(rows))
    bar.close()
    for arr in (tokens, features, topk_ids, topk_logits):
        arr.flush()
    index = {"offsets": offsets.tolist(), "prompt_lengths": [len(p) for p, _ in sequences], "taps": list(taps),
             "top_k": top_k, "target": name, "vocab_size": cfg.vocab_size, "dim": cfg.dim}
    (directory / "index.json").write_text(json.dumps(index))
    return directory


class Dataset:
    """A data set written by `extract`, memory-mapped; sequences may be restricted to `rows`."""

    def __init__(self, directory, rows: Sequence[int] | None = None):
        directory = Path(directory)
        if not (directory / "index.json").exists():
            raise ConfigError(f"{directory} is not a distillation data set (no index.json)")
        self.index = json.loads((directory / "index.json").read_text())
        self.offsets = np.asarray(self.index["offsets"], np.int64)
        self.prompt_lengths = np.asarray(self.index["prompt_lengths"], np.int64)
        self.taps = tuple(self.index["taps"])
        self.tokens = np.load(directory / "tokens.npy", mmap_mode="r")
        self.features = np.load(directory / "features.npy", mmap_mode="r")
        self.topk_ids = np.load(directory / "topk_ids.npy", mmap_mode="r")
        self.topk_logits = np.load(directory / "topk_logits.npy", mmap_mode="r")
        self.rows = np.arange(len(self.prompt_lengths)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def sequence(self, row: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[row]:self.offsets[row + 1]])

    def response_tokens(self):
        """The response part of every sequence (what the draft vocabulary is counted on)."""
        for r in self.rows:
            yield self.sequence(r)[self.prompt_lengths[r]:]

    def windows(self, rng: np.random.Generator, size: int, length: int) -> "Windows":
        """`size` random sequences, each cut to a random window of `length` tokens when longer: where
        each window starts in the flat arrays, its length, and how many prompt tokens it holds."""
        lo = np.zeros((size,), np.int64)
        lengths = np.zeros((size,), np.int32)
        prompts = np.zeros((size,), np.int32)
        for j, r in enumerate(rng.choice(self.rows, size)):
            a, b, p = self.offsets[r], self.offsets[r + 1], self.prompt_lengths[r]
            n = b - a
            start = 0 if n <= length else int(rng.integers(0, n - length + 1))
            lo[j], lengths[j], prompts[j] = a + start, min(n - start, length), max(p - start, 0)
        return Windows(lo, lengths, prompts, length)

    def batch(self, rng: np.random.Generator, size: int, length: int, *, features: bool = True) -> dict:
        """`size` random sequences cut to `length` tokens (a random window of longer ones), right-padded
        -> numpy arrays for `ttt_loss` (without taps / top-k when `features` is False: a draft model's
        training reads tokens only)."""
        return self.gather(self.windows(rng, size, length), features=features)

    def gather(self, w: "Windows", *, features: bool = True) -> dict:
        """The batch of windows `w` as numpy arrays (see `batch`)."""
        n_taps, k = len(self.taps), self.topk_ids.shape[1]
        width = self.features.shape[1]
        size, length = len(w.lo), w.length
        out = {"tokens": np.zeros((size, length), np.int32),
               "taps": np.zeros((n_taps, size, length, width // n_taps), np.float32),
               "topk_ids": np.zeros((size, length, k), np.int32),
               "topk_logits": np.full((size, length, k), -1e30, np.float32),
               "prompt_lengths": w.prompt_lengths.copy(), "lengths": w.lengths.copy()}
        if not features:
            for key in ("taps", "topk_ids", "topk_logits"):
                del out[key]
        for j in range(size):
            lo, m = int(w.lo[j]), int(w.lengths[j])
            hi = lo + m
            out["tokens"][j, :m] = self.tokens[lo:hi]
            if features:
                out["taps"][:, j, :m] = np.asarray(self.features[lo:hi], np.float32).reshape(m, n_taps, -1).transpose(1, 0, 2)
                out["topk_ids"][j, :m] = self.topk_ids[lo:hi]
                out["topk_logits"][j, :m] = self.topk_logits[lo:hi]
        return out


@dataclasses.dataclass(frozen=True)
class Windows:
    """Where a batch's sequences lie in a data set's flat arrays (`Dataset.windows`)."""
    lo: np.ndarray  # [B] int64: first token of each window
    lengths: np.ndarray  # [B] int32: tokens in each window (<= length)
    prompt_lengths: np.ndarray  # [B] int32: prompt tokens at the window's start
    length: int  # the padded length


class DeviceData:
    """A data set's arrays held in accelerator memory, batches gathered there: the host only draws
    where the windows start (`Dataset.windows`), so training is not bound by building float32
    batches on the host and copying them over (on a GPU that limited the step rate). The batches
    equal `Dataset.gather`'s. Memory: the data set's size (features are float16) on the device."""

    def __init__(self, dataset: Dataset, *, features: bool = True):
        self.n_taps = len(dataset.taps)
        self.arrays = {"tokens": jnp.asarray(np.asarray(dataset.tokens))}
        if features:
            self.arrays.update(features=jnp.asarray(np.asarray(dataset.features)),
                               topk_ids=jnp.asarray(np.asarray(dataset.topk_ids)),
                               topk_logits=jnp.asarray(np.asarray(dataset.topk_logits)))
        self._gather = jax.jit(functools.partial(_device_gather, n_taps=self.n_taps), static_argnames=("length",))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def gather(self, w: Windows) -> dict:
        lengths_b = jnp.asarray(w.lengths)
        out = self._gather(self.arrays, jnp.asarray(w.lo, jnp.int32), lengths_b, length=w.length)
        return {**out, "prompt_lengths": jnp.asarray(w.prompt_lengths), "lengths": lengths_b}


def _device_gather(arrays: dict, lo_b, lengths_b, *, length: int, n_taps: int) -> dict:
    t = jnp.arange(length)
    valid_bt = t[None, :] < lengths_b[:, None]
    idx_bt = jnp.where(valid_bt, lo_b[:, None] + t[None, :], 0)
    out = {"tokens": jnp.where(valid_bt, arrays["tokens"][idx_bt], 0)}
    if "features" in arrays:
        f_btw = jnp.where(valid_bt[..., None], arrays["features"][idx_bt].astype(jnp.float32), 0.0)
        B, T, W = f_btw.shape
        out["taps"] = f_btw.reshape(B, T, n_taps, W // n_taps).transpose(2, 0, 1, 3)
        out["topk_ids"] = jnp.where(valid_bt[..., None], arrays["topk_ids"][idx_bt], 0)
        out["topk_logits"] = jnp.where(valid_bt[..., None], arrays["topk_logits"][idx_bt].astype(jnp.float32), -1e30)
    return out
