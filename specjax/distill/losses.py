"""Distillation losses between a target distribution p and a draft's logits, per position.

Axes: ... any leading axes (batch, positions), V the vocabulary the two are compared over (the draft
vocabulary for EAGLE-3 heads). Every function returns the per-position loss [...] in float32; the
caller masks and averages. Targets come as logits (`target_logits`) or probabilities; -inf logits
(ids the target's stored top-k left out) have probability 0.

  soft_cross_entropy   -sum p log q: EAGLE-3's loss (p restricted to the draft vocabulary and
                       renormalised there by the caller's choice of logits)
  forward_kl           KL(p || q) = sum p (log p - log q)      (mode covering)
  reverse_kl           KL(q || p) = sum q (log q - log p)      (mode seeking)
  total_variation      1/2 sum |p - q|  (1 - TV is the acceptance rate of one proposal, Leviathan et al.)
  jsd                  beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q (DistillSpec's
                       JSD(beta); beta = 0.5 is the symmetric Jensen-Shannon divergence)

Logits are divided by `temperature` first, on both sides, as DistillSpec does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DIVERGENCES = ("forward_kl", "reverse_kl", "total_variation", "jsd")


def _logp(logits, temperature):
    return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _xlogy(x, y):
    """x * y with 0 * (-inf) = 0."""
    return jnp.where(x > 0, x * y, 0.0)


def soft_cross_entropy(target_logits, draft_logits, temperature: float = 1.0):
    p = jnp.exp(_logp(target_logits, temperature))
    return -jnp.sum(_xlogy(p, _logp(draft_logits, temperature)), axis=-1)


def forward_kl(target_logits, draft_logits, temperature: float = 1.0):
    logp, logq = _logp(target_logits, temperature), _logp(draft_logits, temperature)
    return jnp.sum(_xlogy(jnp.exp(logp), logp - logq), axis=-1)


def reverse_kl(target_logits, draft_logits, temperature: float = 1.0):
    logp, logq = _logp(target_logits, temperature), _logp(draft_logits, temperature)
    # q > 0 everywhere; where p = 0 (an id the stored top-k left out) the exact divergence is
    # infinite: log p is clipped at -1e4 so that the loss stays finite and still pushes that mass away
    return jnp.sum(jnp.exp(logq) * (logq - jnp.maximum(logp, -1e4)), axis=-1)


def total_variation(target_logits, draft_logits, temperature: float = 1.0):
    p, q = jnp.exp(_logp(target_logits, temperature)), jnp.exp(_logp(draft_logits, temperature))
    return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def jsd(target_logits, draft_logits, temperature: float = 1.0, beta: float = 0.5):
    logp, logq = _logp(target_logits, temperature), _logp(draft_logits, temperature)
    p, q = jnp.exp(logp), jnp.exp(logq)
    m = beta * p + (1 - beta) * q
    logm = jnp.log(jnp.maximum(m, 1e-38))
    return beta * jnp.sum(_xlogy(p, logp - logm), axis=-1) + (1 - beta) * jnp.sum(_xlogy(q, logq - logm), axis=-1)


def divergence(name: str, target_logits, draft_logits, temperature: float = 1.0, beta: float = 0.5):
    """One of DIVERGENCES by name."""
    if name == "forward_kl":
        return forward_kl(target_logits, draft_logits, temperature)
    if name == "reverse_kl":
        return reverse_kl(target_logits, draft_logits, temperature)
    if name == "total_variation":
        return total_variation(target_logits, draft_logits, temperature)
    if name == "jsd":
        return jsd(target_logits, draft_logits, temperature, beta)
    raise ValueError(f"unknown divergence {name!r}; choose from {', '.join(DIVERGENCES)}")
