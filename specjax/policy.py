"""Speculate only when it pays: the window of every round chosen inside the jit (`gamma="auto"`).

Axes: B batch, G the largest window (G_max), W the compiled verify widths.

Each round the loop picks one verify width W from a few compiled ones (`Policy.widths`, e.g. 0, 1, 2,
4, 8; 0 is a plain one-token step) and runs a round of that width: the drafter proposes W tokens,
the target verifies W + 1 positions, the rule decides, and everything is padded back to G_max so the
loop's shapes never change (the decode loop runs the widths as a chain of while loops,
`loop.adaptive_run`, so that choosing a width copies nothing). The width minimises the expected
time until the batch's last row is done (a call returns when its slowest row does):

    time(W) = cost(W) * max_b r_b / E_b(W),   E_b(W) = 1 + sum_{i=1..min(W, m_b)} prod_{j<i} a_bj

over the rows still decoding, where r_b is the tokens row b has still to emit, a_bj is row b's running estimate of P(proposal j accepted | 0..j-1 accepted) and m_b the
proposals the row has (prompt lookup: what its match offers; other drafters: G_max), and
cost(W) = (drafting W proposals + a (W+1)-token verify pass) / one plain target step, measured by
`specjax calibrate` for this machine, target, drafter and batch size (`Costs`), or stated defaults.
cost(0) = 1 and E(0) = 1: a plain step. So a round speculates only when it is expected to bring the
slowest row's end closer than plain decoding would (at batch 1: when its expected rate beats plain
decoding), and every row then proposes up to W tokens: once the batch pays for a width, extra
proposals cost nothing more and can only add tokens. (Maximising the batch's total tokens per unit
of cost instead sped up rows that finish early anyway, while every round a low-acceptance row
could not use slowed that row, and with it the call: 0.87-0.94x of plain decoding at batch 4.)

Estimates (`Adapt`, part of the loop state): per row and draft position, counts of proposals
reached and accepted, decayed by `decay` in every round in which the row had a proposal (so a row
that changes character, e.g. from copying its prompt to free text, is followed). A position's estimate is shrunk towards its row's
pooled rate, and the pooled rate towards `prior`, by pseudo-counts; a row whose estimates say that
speculation does not pay is re-tested by probe rounds (`probe_every`).

Exactness does not depend on any of this: the window of a round is fixed from the past before the
round draws anything, and speculative decoding is exact for every window, so each row still follows
its target. (Rows share the width, so with "auto" a row's tokens depend on the batch it runs in;
with a fixed gamma a row run alone with the same key draws the same tokens.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import struct

import numpy as np

from specjax import metrics, validate
from specjax.config import cache_dir
from specjax.errors import ConfigError

DEFAULT_GAMMA_MAX = 8
DEFAULT_GAMMA_MAX_LOOKUP = 16  # prompt lookup: proposals are nearly free, matches can be long
CALIBRATION_FILE = "calibration.json"
CALIBRATION_BATCHES = (1, 2, 4, 8, 16, 32, 64)
# Stated defaults when no calibration exists: a (W+1)-token verify pass costs 1 + VERIFY_SLOPE * W
# target steps at batch 1, the slope growing with the batch (rows make the pass compute-bound);
# a drafter's own `default_cost` per proposal, or DEFAULT_DRAFT_COST.
VERIFY_SLOPE = 0.04
DEFAULT_DRAFT_COST = 0.3
# Speculation "loses" at a batch size when no window beats a plain step even at this acceptance rate.
FALLBACK_ACCEPTANCE = 0.9
OBJECTIVES = ("slowest", "rate")


def widths_for(gamma_max: int) -> tuple[int, ...]:
    """The compiled widths for a largest window G_max: 0, then powers of two below it, then G_max."""
    out = [0]
    w = 1
    while w < gamma_max:
        out.append(w)
        w *= 2
    return tuple(out + [gamma_max])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Costs:
    """Round costs for one batch size, in plain decoding steps: `round[W]` for W in 0..G_max = (drafting W
    proposals + the (W+1)-token verify pass + what the drafter does every round, e.g. an EAGLE head's
    observe) / one step of plain decoding. round[0] (a plain step inside the speculative program) is 1
    for drafters that add nothing to it, more for those that do."""

    round: tuple[float, ...]
    source: str = "default"

    @classmethod
    def default(cls, gamma_max: int, batch: int, draft_cost: float) -> "Costs":
        slope = VERIFY_SLOPE * max(1, batch) ** 0.5
        return cls(round=(1.0,) + tuple(w * draft_cost + 1.0 + slope * w for w in range(1, gamma_max + 1)),
                   source=f"default (c = {draft_cost:g}, v(G) = 1 + {slope:.3g} G)")


@struct.dataclass
class Adapt:
    """Decayed counts per row and draft position [B, G]: proposals reached and accepted."""

    reached: jax.Array  # [B, G] float32
    accepted: jax.Array  # [B, G] float32
    width: jax.Array  # [B] int32, the sum of the verify widths of the row's rounds (statistics)
    plain: jax.Array  # [B] int32, the row's rounds of width 0 (plain steps)

    @classmethod
    def zeros(cls, batch: int, gamma: int) -> "Adapt":
        z, zb = jnp.zeros((batch, gamma), jnp.float32), jnp.zeros((batch,), jnp.int32)
        return cls(reached=z, accepted=z, width=zb, plain=zb)

    def logical_axes(self) -> "Adapt":
        return Adapt(reached=("batch", None), accepted=("batch", None), width=("batch",), plain=("batch",))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """The static half of `gamma="auto"` (hashable: part of the loop's `Decoder`).

    widths: compiled verify widths, ascending, starting at 0 (or at 1 for drafters that must see every
    round), ending at G_max. round_cost: cost(W) for each of `widths` (see `Costs`). prior: the
    acceptance rate assumed before a row has evidence; strength / pooled_strength: pseudo-counts
    pulling a position's estimate to its row's pooled rate, and that to the prior; decay: the factor
    counts keep per round; probe_every: when the estimates say no width pays, every probe_every-th
    round still verifies the narrowest speculative width (if it could pay at all, i.e. at acceptance
    FALLBACK_ACCEPTANCE), so a row whose acceptance is better than believed is found out; 0 = never.
    objective: "slowest" (default) minimises the expected time until the batch's last row is done (a
    call returns then); "rate" maximises the batch's expected tokens per unit of cost, for callers
    that do not wait for the slowest row."""

    widths: tuple[int, ...]
    round_cost: tuple[float, ...]
    prior: float = 0.6
    strength: float = 2.0
    pooled_strength: float = 2.0
    decay: float = 0.9
    probe_every: int = 64
    objective: str = "slowest"
    source: str = "default"

    def __post_init__(self):
        w = self.widths
        if not w or list(w) != sorted(set(w)) or w[0] < 0:
            raise ConfigError(f"policy widths must be distinct, ascending and >= 0, got {w}")
        if len(self.round_cost) != len(w) or not all(c > 0 for c in self.round_cost):
            raise ConfigError(f"policy round_cost needs one positive cost per width {w}, got {self.round_cost}")
        if not 0.0 < self.prior < 1.0 or not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"policy prior must be in (0, 1) and decay in (0, 1], got {self.prior}, {self.decay}")
        if not (self.strength > 0 and self.pooled_strength > 0):
            raise ConfigError(f"policy strength and pooled_strength must be > 0, got {self.strength}, "
                              f"{self.pooled_strength}")
        if not isinstance(self.probe_every, int) or self.probe_every < 0:
            raise ConfigError(f"policy probe_every must be an integer >= 0, got {self.probe_every!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"policy objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")

    @classmethod
    def make(cls, costs: Costs, *, gamma_max: int, min_width: int = 0, **kw) -> "Policy":
        """The policy over `widths_for(gamma_max)` (from `min_width` on) with these costs."""
        if len(costs.round) < gamma_max + 1:
            raise ConfigError(f"costs cover windows up to {len(costs.round) - 1}, G_max is {gamma_max}")
        widths = tuple(w for w in widths_for(gamma_max) if w >= min_width)
        return cls(widths=widths, round_cost=tuple(float(costs.round[w]) for w in widths), source=costs.source, **kw)

    def estimates(self, adapt: Adapt) -> jax.Array:
        """a [B, G]: each row's acceptance estimate by draft position. The first position is shrunk
        towards the prior alone; later ones towards the row's pooled rate over positions >= 1 (itself
        shrunk towards the prior). The first proposal of a round is the hard one (for prompt lookup:
        is the match still right?); pooling it with the long accepted runs that follow a right match
        made a row that rarely gets its first proposal right look like a good row."""
        first_b1 = ((adapt.accepted[:, :1] + self.strength * self.prior)
                    / (adapt.reached[:, :1] + self.strength))
        pooled_b1 = ((adapt.accepted[:, 1:].sum(-1, keepdims=True) + self.pooled_strength * self.prior)
                     / (adapt.reached[:, 1:].sum(-1, keepdims=True) + self.pooled_strength))
        later_bg = (adapt.accepted[:, 1:] + self.strength * pooled_b1) / (adapt.reached[:, 1:] + self.strength)
        return jnp.concatenate([first_b1, later_bg], axis=1)

    def expected_tokens(self, a_bg: jax.Array, available_b: jax.Array) -> jax.Array:
        """E_b(W) [B, n_widths]: expected tokens a round of each width emits for row b."""
        G = a_bg.shape[1]
        reach_bg = jnp.cumprod(a_bg, axis=1)  # P(proposals 0..j accepted)
        reach_bg = jnp.where(jnp.arange(G) < available_b[:, None], reach_bg, 0.0)
        cum_bg1 = jnp.concatenate([jnp.ones_like(reach_bg[:, :1]), 1.0 + jnp.cumsum(reach_bg, axis=1)], axis=1)
        return cum_bg1[:, jnp.asarray(self.widths)]

    def choose(self, adapt: Adapt, available_b: jax.Array, active_b: jax.Array, steps: jax.Array,
               remaining_b: jax.Array | None = None) -> jax.Array:
        """The index into `widths` of this round's verify width (a traced int32 scalar).

        Objective "slowest", given `remaining_b` (the tokens each row still has to emit): the width
        minimises the expected time until the last row is done, cost(W) x max_b remaining_b / E_b(W) over
        the active rows: a call returns when its slowest row does, so tokens a fast row gains sooner do
        not shorten it, while a round the slowest row cannot use slows every row down. Objective "rate"
        (or no `remaining_b`): the width maximises the batch's expected tokens per unit of cost. At
        batch 1 the two agree."""
        E_bw = self.expected_tokens(self.estimates(adapt), available_b)
        cost_w = jnp.asarray(self.round_cost, jnp.float32)
        if remaining_b is None or self.objective == "rate":
            total_w = jnp.sum(jnp.where(active_b[:, None], E_bw, 0.0), axis=0)
            best = jnp.argmax(total_w / cost_w).astype(jnp.int32)  # ties: the narrowest
        else:
            rounds_bw = jnp.maximum(remaining_b[:, None].astype(jnp.float32) / E_bw, 1.0)
            slowest_w = jnp.max(jnp.where(active_b[:, None], rounds_bw, 0.0), axis=0)
            best = jnp.argmin(slowest_w * cost_w).astype(jnp.int32)  # ties: the narrowest
        probe = self.probe_index()
        if probe is None:
            return best
        due = (steps % self.probe_every == self.probe_every - 1) & (best == 0) & jnp.any(active_b & (available_b > 0))
        return jnp.where(due, probe, best)

    def probe_index(self) -> int | None:
        """The index of the width a probe round verifies: the narrowest above 0, when width 0 is an
        option, probing is on and that width could pay at acceptance FALLBACK_ACCEPTANCE."""
        if self.probe_every == 0 or len(self.widths) < 2 or self.widths[0] != 0:
            return None
        w = self.widths[1]
        if metrics.expected_tokens_per_round(FALLBACK_ACCEPTANCE, w) <= self.round_cost[1]:
            return None
        return 1

    def update(self, adapt: Adapt, accepted_b: jax.Array, proposed_bg: jax.Array, active_b: jax.Array,
               width: jax.Array) -> Adapt:
        """Fold one round in: proposal j was reached if it existed and 0..j-1 were accepted. Only a row
        with a proposal in this round forgets (its counts decay): a plain step is no evidence, and
        forgetting during plain steps brought every row back to the prior, and into speculation it had
        just been found not to pay for, within a few rounds (probe rounds re-test it instead)."""
        j_g = jnp.arange(proposed_bg.shape[1])
        reached = (j_g <= accepted_b[:, None]) & proposed_bg & active_b[:, None]
        accepted = (j_g < accepted_b[:, None]) & active_b[:, None]
        decay_b1 = jnp.where(jnp.any(reached, axis=1, keepdims=True), self.decay, 1.0)
        return Adapt(reached=decay_b1 * adapt.reached + reached, accepted=decay_b1 * adapt.accepted + accepted,
                     width=adapt.width + jnp.where(active_b, width, 0),
                     plain=adapt.plain + (active_b & (width == 0)))


# --- calibration: measured costs on this machine ------------------------------------------------


def calibration_path() -> str:
    return os.fspath(cache_dir() / CALIBRATION_FILE)


def calibration_key(*, backend: str, device_kind: str, model: str, drafter: str) -> str:
    return f"{backend}|{device_kind}|{model}|{drafter}"


def device_identity() -> tuple[str, str]:
    d = jax.devices()[0]
    return d.platform, getattr(d, "device_kind", d.platform)


def load_calibration(path: str | None = None) -> dict:
    path = path or calibration_path()
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"calibration file {path} is unreadable ({err}); delete it or run specjax calibrate") from err
    if not isinstance(data, dict):
        raise ConfigError(f"calibration file {path} must hold a JSON object")
    return data


def save_calibration(key: str, entry: dict, path: str | None = None) -> str:
    """Store (or replace) one calibration entry; -> the file written."""
    path = path or calibration_path()
    data = load_calibration(path)
    data[key] = entry
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def entry_batch(entry: dict, batch: int) -> int | None:
    """The measured batch size that stands for `batch` rows: the nearest at or above it (the largest
    measured one past them); None for an entry without measurements."""
    sizes = [int(b) for b in entry.get("batches", {})]
    if not sizes:
        return None
    above = [b for b in sizes if b >= batch]
    return min(above) if above else max(sizes)


def costs_from_entry(entry: dict, batch: int, gamma_max: int) -> Costs | None:
    """The calibrated costs for `batch` rows (at `entry_batch`); None when the entry has none or does
    not cover gamma_max."""
    b = entry_batch(entry, batch)
    if b is None:
        return None
    cost = entry["batches"][str(b)].get("round")
    if not isinstance(cost, list) or len(cost) < gamma_max + 1:
        return None
    return Costs(round=tuple(float(x) for x in cost[:gamma_max + 1]), source=f"calibrated (batch {b})")


def fallback_batch(entry: dict, acceptance: float = FALLBACK_ACCEPTANCE) -> int | None:
    """The smallest measured batch size at which no window is predicted to beat plain decoding even
    at `acceptance` for every proposal (speculation loses there on this machine); None if none."""
    for b, r in sorted((int(b), r) for b, r in entry.get("batches", {}).items()):
        cost = r["round"]
        if all(metrics.expected_tokens_per_round(acceptance, w) / cost[w] <= 1.0 for w in range(1, len(cost))):
            return b
    return None


def check_entry(entry, key: str, path: str) -> dict:
    """A calibration entry as `calibrate` writes it, or a ConfigError naming the file and the key."""
    def bad(why):
        return ConfigError(f"calibration file {path}, entry {key!r}: {why}; run specjax calibrate again or delete it")

    if not isinstance(entry, dict) or not isinstance(entry.get("batches"), dict) or not entry["batches"]:
        raise bad("expected an object with a non-empty 'batches' object")
    for b, row in entry["batches"].items():
        if not str(b).isdigit() or not isinstance(row, dict):
            raise bad(f"batch {b!r}: expected an integer batch size and an object")
        cost = row.get("round")
        if (not isinstance(cost, list) or not cost
                or not all(isinstance(x, (int, float)) and x > 0 for x in cost)):
            raise bad(f"batch {b}: 'round' must be a list of positive numbers")
    return entry


def resolve_costs(*, model: str, drafter: str, batch: int, gamma_max: int, draft_cost: float,
                  path: str | None = None) -> tuple[Costs, dict | None]:
    """Calibrated costs for this device, target, drafter and batch, else the stated defaults.
    -> (costs, the calibration entry or None)."""
    backend, kind = device_identity()
    if path is not None and not os.path.exists(path):
        raise ConfigError(f"calibration file {path} does not exist (run specjax calibrate --file {path})")
    key = calibration_key(backend=backend, device_kind=kind, model=model, drafter=drafter)
    entry = load_calibration(path).get(key)
    if entry is not None:
        entry = check_entry(entry, key, path or calibration_path())
    costs = costs_from_entry(entry, batch, gamma_max) if entry else None
    return (costs or Costs.default(gamma_max, batch, draft_cost)), (entry if costs else None)


def auto_policy(*, model: str, drafter: str, batch: int, gamma_max: int, draft_cost: float,
                must_observe: bool = False, path: str | None = None, **kw) -> Policy:
    """The `gamma="auto"` policy for one compiled batch size. Above the calibrated fallback batch size
    the only width is 0 (plain decoding in the same program: no drafting, no observing). Drafters that must see every round
    (a draft model with its own cache) never get width 0 otherwise."""
    costs, entry = resolve_costs(model=model, drafter=drafter, batch=batch, gamma_max=gamma_max,
                                 draft_cost=draft_cost, path=path)
    policy = Policy.make(costs, gamma_max=gamma_max, min_width=1 if must_observe else 0, **kw)
    limit = fallback_batch(entry) if entry else None
    if limit is not None and batch >= limit:
        return Policy(widths=(0,), round_cost=(1.0,), source=f"{costs.source}; plain from batch {limit}", **kw)
    return policy


def parse_gamma(value, *, name: str = "gamma") -> int | str:
    """An int >= 1, or "auto"."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            value = int(text)
    if isinstance(value, str):
        raise ConfigError(f"{name} must be an integer >= 1 or 'auto', got {value!r}")
    return validate.integer(name, value, low=1)
