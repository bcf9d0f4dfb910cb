"""The one parser of drafter strings, for the CLI, the Python API and the bench.

    model:NAME                     a draft model (NAME resolved by a loader the caller provides: the
                                   engine does not import the model zoo); with the target's tokenizer,
                                   or with another one whose tokens mostly match the target's by their
                                   bytes (token-level intersection, `specjax.drafters.crossvocab`)
    layerskip:K | layerskip:0-9,20-29 [:own]
                                   a subset of the target's own blocks (first K, or ranges); `:own`
                                   gives it a private KV cache instead of the target's
    ngram:NMAX[:NMIN]              prompt lookup with n-grams from NMAX down to NMIN (default 1)
    eagle:DIR                      an EAGLE-3 head in the community checkpoint layout (DIR read by a
                                   loader the caller provides, as for model:NAME)

`parse` turns a string into a `DrafterSpec` (syntax only, no model needed); `resolve` turns a spec,
a string, a loaded draft model, a loaded EAGLE-3 head or a ready (drafter, params) pair into a
`Resolved` drafter for a given target.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from specjax.drafters.eagle import eagle_drafter
from specjax.drafters.layerskip import layer_skip, parse_layers
from specjax.drafters.model import ModelDrafter
from specjax.drafters.ngram import NGramDrafter
from specjax.errors import ConfigError, IncompatibleDraftError
from specjax.lm import LM

SYNTAX = "model:NAME, layerskip:K[:own], layerskip:A-B,C-D[:own], ngram:NMAX[:NMIN], or eagle:DIR"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DrafterSpec:
    """A parsed drafter string."""

    kind: str  # "model" | "layerskip" | "ngram" | "eagle"
    text: str  # the string it came from
    name: str | None = None  # model: what the loader resolves; eagle: the head's directory
    layers: str | None = None  # layerskip: "K" or ranges, checked against the target when resolved
    cache: str = "shared"  # layerskip: "shared" | "own"
    nmax: int = 0  # ngram
    nmin: int = 1  # ngram


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A drafter ready for the loop, its params, and the vocabulary it shares with the target."""

    drafter: Any
    params: Any
    vocab_limit: int | None = None  # ids >= this must never be drawn (two embeddings padded differently)
    rows: int | None = None  # the draft embedding's rows, when it differs from the target's


def parse(text: str) -> DrafterSpec:
    """A drafter string -> DrafterSpec; a `ConfigError` naming the string and the syntax otherwise."""
    if not isinstance(text, str):
        raise ConfigError(f"a drafter string must be a str, got {type(text).__name__}")
    kind, _, rest = text.partition(":")
    if kind in ("model", "eagle") and rest:
        return DrafterSpec(kind=kind, text=text, name=rest)
    if kind == "layerskip" and rest:
        layers, _, cache = rest.partition(":")
        if cache not in ("", "shared", "own"):
            raise ConfigError(f"drafter {text!r}: the layer-skip cache must be 'shared' or 'own', got {cache!r}")
        if not layers:
            raise ConfigError(f"drafter {text!r}: expected layerskip:K or layerskip:A-B,C-D")
        return DrafterSpec(kind="layerskip", text=text, layers=layers, cache=cache or "shared")
    if kind == "ngram" and rest:
        sizes = rest.split(":")
        if len(sizes) > 2:
            raise ConfigError(f"drafter {text!r}: expected ngram:NMAX[:NMIN], got {len(sizes)} fields")
        try:
            nmax, nmin = int(sizes[0]), int(sizes[1]) if len(sizes) > 1 else 1
        except ValueError as err:
            raise ConfigError(f"drafter {text!r}: expected ngram:NMAX[:NMIN] with integers") from err
        if not 1 <= nmin <= nmax:
            raise ConfigError(f"drafter {text!r}: ngram sizes must satisfy 1 <= NMIN <= NMAX")
        return DrafterSpec(kind="ngram", text=text, nmax=nmax, nmin=nmin)
    raise ConfigError(f"unknown drafter {text!r}; use {SYNTAX}")


def resolve(draft, target, *, load_model: Callable[[str], Any] | None = None,
            load_head: Callable[[str], Any] | None = None) -> Resolved:
    """`draft` for `target` (a loaded model: `.module`, `.tokenizer`) -> Resolved.

    draft: a drafter string or `DrafterSpec`; a loaded draft model with the target's tokenizer; a
    loaded EAGLE-3 head (e.g. `specjax.models.load_eagle(DIR)`); or an already built (drafter,
    params) pair. `load_model(name)` loads the model of `model:NAME`, `load_head(dir)` the head of
    `eagle:DIR`."""
    if isinstance(draft, tuple) and len(draft) == 2:
        return Resolved(draft[0], draft[1])
    if is_eagle_head(draft):
        return Resolved(*eagle_drafter(draft, target.module))
    if hasattr(draft, "module"):
        if other_tokenizer(target, draft):
            return cross_vocab(target, draft)
        limit = check_vocabularies(target, draft)
        lm, params = LM.split(draft.module)
        rows = draft.module.config.vocab_size
        return Resolved(ModelDrafter(lm, target_vocab=target.module.config.vocab_size), params, limit,
                        rows if limit is not None else None)
    spec = parse(draft) if isinstance(draft, str) else draft
    if not isinstance(spec, DrafterSpec):
        raise ConfigError(f"draft must be a loaded model, a drafter string ({SYNTAX}) or a (drafter, params) "
                          f"pair, got {type(draft).__name__}")
    if spec.kind == "model":
        if load_model is None:
            raise ConfigError(f"drafter {spec.text!r}: 'model:NAME' needs a model loader (the CLI and the bench "
                              "provide one); from Python, pass the loaded draft model itself")
        return resolve(load_model(spec.name), target)
    if spec.kind == "eagle":
        if load_head is None:
            raise ConfigError(f"drafter {spec.text!r}: 'eagle:DIR' needs a head loader (the CLI and the bench "
                              "provide one); from Python, pass `specjax.models.load_eagle(DIR)` itself")
        head = load_head(spec.name)
        if not is_eagle_head(head):
            raise ConfigError(f"drafter {spec.text!r}: the head loader returned a {type(head).__name__}, not an "
                              "EAGLE-3 head")
        return Resolved(*eagle_drafter(head, target.module))
    if spec.kind == "layerskip":
        lm = LM.split(target.module)[0]
        return Resolved(layer_skip(lm, parse_layers(spec.layers, lm.config.num_layers), spec.cache), None)
    return Resolved(NGramDrafter(nmax=spec.nmax, nmin=spec.nmin), None)


def other_tokenizer(target, draft) -> bool:
    """True when both models have tokenizers and their vocabularies differ (token for token)."""
    t_tok, d_tok = getattr(target, "tokenizer", None), getattr(draft, "tokenizer", None)
    if t_tok is None or d_tok is None:
        return False
    return t_tok.vocab_size != d_tok.vocab_size or t_tok.backend.get_vocab() != d_tok.backend.get_vocab()


def cross_vocab(target, draft) -> Resolved:
    """A draft model with another tokenizer: its vocabulary matched with the target's by bytes
    (`crossvocab.tokenizer_vocab_map`), refused when the intersection is too small."""
    from specjax.drafters import crossvocab
    from specjax.errors import ConversionError

    for tok in (target.tokenizer, draft.tokenizer):
        try:
            tok.kind()
        except ConversionError as err:
            raise IncompatibleDraftError(f"{_difference(target.tokenizer, draft.tokenizer)}; a draft with another "
                                         f"tokenizer must spell its tokens as bytes specjax can match ({err})") from None
    lm, params = LM.split(draft.module)
    vmap = crossvocab.tokenizer_vocab_map(target.tokenizer, draft.tokenizer,
                                          target_rows=target.module.config.vocab_size,
                                          draft_rows=draft.module.config.vocab_size)
    crossvocab.check_shared(vmap)
    drafter = crossvocab.CrossVocabDrafter(lm, max_len=vmap.max_len, target_vocab=target.module.config.vocab_size,
                                           vocab=vmap, tokenizer=draft.tokenizer)
    return Resolved(drafter, {"model": params, **vmap.tables()})


def _difference(t_tok, d_tok) -> str:
    """How two tokenizers differ, for an error message."""
    if t_tok.vocab_size != d_tok.vocab_size:
        return f"draft tokenizer has {d_tok.vocab_size} tokens, the target's has {t_tok.vocab_size}"
    diffs = [i for i in range(t_tok.vocab_size) if t_tok.token(i) != d_tok.token(i)]
    shown = ", ".join(f"id {i}: target {t_tok.token(i)!r} vs draft {d_tok.token(i)!r}" for i in diffs[:3])
    return f"draft and target tokenizers differ at {len(diffs)} ids ({shown})"


def is_eagle_head(x) -> bool:
    """A loaded EAGLE-3 head module (its config has a draft vocabulary and tapped layers)."""
    cfg = getattr(x, "config", None)
    return hasattr(cfg, "draft_vocab_size") and hasattr(cfg, "taps") and hasattr(x, "fuse")


def check_vocabularies(target, draft) -> int | None:
    """For a draft model with the target's tokens (or no tokenizers): refuse embeddings too small for
    the tokenizer or of different sizes without tokenizers; -> the shared vocabulary size
    when the two embeddings are padded differently (ids past it must be masked), else None."""
    t_tok, d_tok = getattr(target, "tokenizer", None), getattr(draft, "tokenizer", None)
    t_rows, d_rows = target.module.config.vocab_size, draft.module.config.vocab_size
    if t_tok is not None and d_tok is not None:  # identical vocabularies (`other_tokenizer` sent the rest away)
        shared = t_tok.vocab_size
        if shared > min(t_rows, d_rows):
            raise IncompatibleDraftError(
                f"embedding has fewer rows than the tokenizer has tokens (target {t_rows}, draft {d_rows}, "
                f"tokenizer {shared})")
        return shared if t_rows != d_rows else None
    if t_rows != d_rows:
        raise IncompatibleDraftError(
            f"draft vocabulary size {d_rows} differs from the target's {t_rows}, and without tokenizers "
            "specjax cannot tell whether one is a padded version of the other")
    return None
