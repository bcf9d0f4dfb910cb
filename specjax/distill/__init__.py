"""Training drafts the target accepts: data from the target itself, a pruned draft vocabulary, the
EAGLE-3 training-time-test loss, optax training with orbax checkpoints (`specjax distill`)."""
