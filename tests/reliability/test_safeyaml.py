"""The YAML gate every loader uses: bombs, tags, depth and recursion refused fast;
ordinary YAML read exactly as `yaml.safe_load` reads it."""

from __future__ import annotations

import time

import pytest
import yaml
from corpus import _yaml_bomb
from hypothesis import given, settings
from hypothesis import strategies as st

from loralab.errors import UserError
from loralab.safeyaml import YamlError, load, load_all


@pytest.mark.parametrize("text, what", [
    (_yaml_bomb(9), "alias bomb"),
    ("a: &a [*a]\n", "recursive alias"),
    ("!!python/object/apply:os.system ['true']\n", "object tag"),
    ("a: " + "[" * 5000 + "]" * 5000, "nested deeper"),
    ("a: [1, 2\n", "not valid YAML"),
    (b"a: \xff\n", "not UTF-8"),
])
def test_refused_fast_with_a_reason(text, what):
    t0 = time.time()
    with pytest.raises(YamlError) as e:
        load(text)
    assert time.time() - t0 < 5
    assert isinstance(e.value, UserError)
    msg = str(e.value)
    assert "\n" not in msg
    if what == "object tag":
        assert "python/object" in msg
    elif what == "alias bomb":
        assert "alias" in msg
    elif what == "recursive alias":
        assert "recursive" in msg


def test_small_aliases_still_work():
    text = "base: &b {lr: 0.001, steps: 3}\nrun1: *b\nrun2: {<<: *b, steps: 5}\n"
    assert load(text) == yaml.safe_load(text)
    assert load(text)["run2"] == {"lr": 0.001, "steps": 5}


def test_several_documents():
    assert load_all("a: 1\n---\n---\nb: 2\n") == [{"a": 1}, {"b": 2}]
    with pytest.raises(YamlError):
        load("a: 1\n---\nb: 2\n")
    assert load("") is None


json_like = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                         lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                         max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(json_like)
def test_round_trip_equals_safe_load(obj):
    text = yaml.safe_dump(obj, allow_unicode=True)
    assert load(text) == yaml.safe_load(text)  # (PyYAML itself does not round-trip some controls)
