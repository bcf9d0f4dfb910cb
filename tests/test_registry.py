"""The one parser of drafter strings, and resolving drafters for a target."""

from __future__ import annotations

import pytest
from conftest import tiny_lm

from specjax.drafters import ModelDrafter, NGramDrafter, SharedCacheLayerSkip, registry
from specjax.errors import ConfigError


@pytest.mark.parametrize("text, fields", [
    ("ngram:3", dict(kind="ngram", nmax=3, nmin=1)),
    ("ngram:4:2", dict(kind="ngram", nmax=4, nmin=2)),
    ("layerskip:24", dict(kind="layerskip", layers="24", cache="shared")),
    ("layerskip:0-11,18-29:own", dict(kind="layerskip", layers="0-11,18-29", cache="own")),
    ("model:converted/smollm2", dict(kind="model", name="converted/smollm2")),
    ("model:truncate:2", dict(kind="model", name="truncate:2")),
])
def test_parse(text, fields):
    spec = registry.parse(text)
    assert spec.text == text
    for key, value in fields.items():
        assert getattr(spec, key) == value


@pytest.mark.parametrize("text, match", [
    ("ngram:2:3", "NMIN <= NMAX"),
    ("ngram:x", "integers"),
    ("ngram:3:1:7", "3 fields"),
    ("ngram:", "unknown drafter"),
    ("medusa:3", "unknown drafter 'medusa:3'"),
    ("layerskip:1:mine", "'shared' or 'own', got 'mine'"),
    ("layerskip::own", "layerskip:K"),
    ("model:", "unknown drafter"),
])
def test_parse_refuses_bad_strings_and_names_them(text, match):
    with pytest.raises(ConfigError, match=match):
        registry.parse(text)


def test_resolve_builds_each_drafter_for_the_target():
    target = tiny_lm(0, layers=4)
    r = registry.resolve("ngram:3:2", target)
    assert r.drafter == NGramDrafter(nmax=3, nmin=2) and r.params is None
    r = registry.resolve("layerskip:0,3", target)
    assert isinstance(r.drafter, SharedCacheLayerSkip) and r.drafter.layers == (0, 3) and r.params is None
    r = registry.resolve("layerskip:2:own", target)
    assert isinstance(r.drafter, ModelDrafter) and r.drafter.layers == (0, 1) and r.drafter.shares_target_params
    r = registry.resolve(tiny_lm(1, layers=1), target)
    assert isinstance(r.drafter, ModelDrafter) and r.params is not None and r.vocab_limit is None
    pair = (NGramDrafter(nmax=2), None)
    assert registry.resolve(pair, target).drafter is pair[0]


def test_resolve_checks_layers_against_the_target():
    with pytest.raises(ConfigError, match=r"must lie in \[0, 4\)"):
        registry.resolve("layerskip:5", tiny_lm(0, layers=4))


def test_model_names_need_a_loader():
    target = tiny_lm(0)
    with pytest.raises(ConfigError, match="needs a model loader"):
        registry.resolve("model:whatever", target)
    loaded = []
    r = registry.resolve("model:whatever", target, load_model=lambda name: loaded.append(name) or tiny_lm(2))
    assert loaded == ["whatever"] and isinstance(r.drafter, ModelDrafter)


def test_other_objects_are_refused():
    with pytest.raises(ConfigError, match="got int"):
        registry.resolve(3, tiny_lm(0))
