"""YAML that cannot hurt: safe tags only, bounded nesting, bounded alias expansion.

`yaml.safe_load` already refuses tags that construct objects, but it happily builds an
alias bomb (nine levels of nine aliases: 387 million leaves once anything walks the
result) or recurses until the interpreter gives up. Every YAML loader of loralab (stage
configs, study specs, YAML data files, rendered YAML records) goes through `load_all`:

    docs = load_all(text)            # list of documents (None documents dropped)
    obj = load(text)                 # exactly the one document, or None

Limits: `max_depth` levels of nesting, `max_nodes` nodes once every alias is expanded,
no recursive anchors. A violation raises `YamlError` (a UserError: one line, exit 2) at
composition time, before anything is built.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import UserError

MAX_DEPTH = 200
MAX_NODES = 2_000_000


class YamlError(UserError):
    """Not YAML, or YAML beyond the limits above; the message says which and where."""


class _Loader(yaml.SafeLoader):
    max_depth = MAX_DEPTH

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: D102 (PyYAML hook)
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise YamlError(f"YAML nested deeper than {self.max_depth} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], active: set[int], limit: int) -> int:
    """Nodes in `node` once every alias is expanded (each shared node counted per use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise YamlError(f"recursive YAML alias (line {node.start_mark.line + 1})")
    active.add(key)
    n = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            n += _expanded_nodes(child, memo, active, limit)
            if n > limit:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            n += _expanded_nodes(k, memo, active, limit) + _expanded_nodes(v, memo, active, limit)
            if n > limit:
                break
    active.discard(key)
    if n > limit:
        raise YamlError(f"YAML expands to more than {limit:,} nodes through its aliases (an alias bomb?)")
    memo[key] = n
    return n


def load_all(text: str | bytes, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> list[Any]:
    """Every non-empty document of `text`, under the limits; YamlError otherwise."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise YamlError("YAML is not UTF-8 text") from None
    loader = _Loader(text)
    loader.max_depth = max_depth
    docs: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _expanded_nodes(node, {}, set(), max_nodes)
            doc = loader.construct_document(node)
            if doc is not None:
                docs.append(doc)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise YamlError(f"not valid YAML{where}: {what}") from None
    except RecursionError:
        raise YamlError("YAML nested too deep to read") from None
    finally:
        loader.dispose()
    return docs


def load(text: str | bytes, **limits: int) -> Any:
    """The single document of `text` (None when empty); YamlError for several or a bad one."""
    docs = load_all(text, **limits)
    if len(docs) > 1:
        raise YamlError(f"expected one YAML document, found {len(docs)}")
    return docs[0] if docs else None
