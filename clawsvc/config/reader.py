"""Bounded YAML reading: the node graph is refused when too big, too deep or alias-expanded too far, before
anything is built; every error names file:line and the dotted key."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import yaml

from clawsvc.config.model import ConfigError
from clawsvc.config.values import MAX_DIGITS, ItemError, Parser
from clawsvc.text import cut, shown

MAX_CONFIG_BYTES = 1 << 20
MAX_NODES = 10_000  # values in the document, counted again for every *alias that repeats them
MAX_CHARS = 2 * MAX_CONFIG_BYTES  # characters of all scalars, counted the same way
MAX_DEPTH = 64  # nesting levels; a real config has four


class _Refused(yaml.YAMLError):
    """A document over one of the bounds, found while composing it (before anything is constructed)."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that stops composing at MAX_NODES nodes or MAX_DEPTH levels (instead of RecursionError)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.nodes = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.nodes += 1
        self.depth += 1
        try:
            if self.nodes > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES} values in one config", self.peek_event().start_mark)
            if self.depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class Reader:
    """Walks the composed YAML node tree so every error can point at a line."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        try:
            self.loader = _BoundedLoader(text)
        except yaml.reader.ReaderError as exc:  # a control character such as NUL in the file itself
            line = text.count("\n", 0, max(exc.position, 0)) + 1
            raise ConfigError(f"{filename}:{line}: YAML syntax error: {str(exc).splitlines()[0]}") from None

    def fail(self, node: yaml.Node | None, key: str, problem: str) -> ConfigError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        where = f" {key}:" if key else ""
        return ConfigError(f"{self.filename}{line}:{where} {problem}")

    def root(self) -> yaml.Node | None:
        """The document's node graph, refused when it is too big, too deep or expands too far through aliases."""
        try:
            node = self.loader.get_single_node()
        except _Refused as exc:
            line = f":{exc.mark.line + 1}" if exc.mark else ""
            raise ConfigError(f"{self.filename}{line}: {exc.problem}; write a smaller config") from None
        except RecursionError:
            raise ConfigError(f"{self.filename}: nested too deeply; write a smaller config") from None
        except yaml.MarkedYAMLError as exc:
            problem = exc.problem or ""
            mark = exc.problem_mark or exc.context_mark
            if exc.context_mark is not None and ("stream end" in problem or "end of stream" in problem):
                mark = exc.context_mark  # an unclosed bracket or quote: the line that opened it, not the file's end
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{self.filename}{line}: YAML syntax error: {cut(_syntax_problem(exc), 160)}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.filename}: YAML error: {cut(str(exc).splitlines()[0], 160)}") from None
        if node is not None:
            self._measure(node, "", {}, set(), 0)
        return node

    def _measure(self, node: yaml.Node, key: str, sizes: dict[int, tuple[int, int]], active: set[int],
                 depth: int) -> tuple[int, int]:
        """(values, characters) the node stands for with every alias expanded; memoised, so linear in the
        file however far the aliases multiply it (a "billion laughs" is refused here, before anything is built)."""
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in active:
            raise self.fail(node, key, "an alias refers to a collection it is part of (a recursive structure); "
                                       "write the values out")
        if depth > MAX_DEPTH:
            raise self.fail(node, key, f"nested (through aliases) more than {MAX_DEPTH} levels deep; write the "
                                       "values out")
        if isinstance(node, yaml.ScalarNode):
            self._check_number(node, key)
            sizes[id(node)] = (1, len(node.value))
            return sizes[id(node)]
        active.add(id(node))
        count, chars = 1, 0
        for child, child_key in _children(node, key):
            more, longer = self._measure(child, child_key, sizes, active, depth + 1)
            count, chars = count + more, chars + longer
            if count > MAX_NODES or chars > MAX_CHARS:
                raise self.fail(node, key, f"expands through YAML aliases to more than {MAX_NODES} values or "
                                           f"{MAX_CHARS // MAX_CONFIG_BYTES} MiB; write the values out")
        active.discard(id(node))
        sizes[id(node)] = (count, chars)
        return sizes[id(node)]

    def _check_number(self, node: yaml.ScalarNode, key: str) -> None:
        """Refuse a number with absurdly many digits before int() or float() is asked to build it."""
        if node.tag in _NUMBER_TAGS:
            digits = sum(ch.isalnum() for ch in node.value)
            if digits > MAX_DIGITS:
                raise self.fail(node, key, f"a number of {digits} digits is out of range")

    def value(self, node: yaml.Node, key: str) -> Any:
        self._no_duplicates(node, key, set())
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self.fail(node, key, f"cannot read value: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise self.fail(node, key, f"cannot read value: {cut(str(exc).splitlines()[0], 200)}") from None
        except (ValueError, ArithmeticError) as exc:  # e.g. !!int abc, !!timestamp 2024-13-45
            raise self.fail(node, key, f"cannot read value: {cut(str(exc), 200)}") from None

    def _no_duplicates(self, node: yaml.Node, key: str, seen: set[int]) -> None:
        """PyYAML silently keeps the last of two equal keys; an admin who wrote both meant something."""
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, child in enumerate(node.value):
                self._no_duplicates(child, f"{key}[{index}]", seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key_node, child in node.value:
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
                if name is not None and name in first:
                    raise self.fail(key_node, f"{key}.{cut(name)}", f"duplicate key (first set on line "
                                                               f"{first[name].start_mark.line + 1})")
                if name is not None:
                    first[name] = key_node
                self._no_duplicates(child, f"{key}.{cut(str(name))}", seen)

    def mapping(self, node: yaml.Node, key: str, allowed: Mapping[str, Any]) -> dict[str, yaml.Node]:
        """The settings of one section as name -> value node, each name checked against the schema."""
        if not isinstance(node, yaml.MappingNode):
            what = "a mapping of settings" if key else "a mapping of sections (gateway:, auth:, ...)"
            raise self.fail(node, key, f"expected {what}, got {self._kind(node)}")
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            name = self.value(key_node, key)
            dotted = f"{key}.{cut(str(name))}" if key else cut(str(name))
            if not isinstance(name, str) or name not in allowed:
                hint = difflib.get_close_matches(cut(str(name)), list(allowed), n=1)
                suggestion = f" (did you mean {key + '.' if key else ''}{hint[0]}?)" if hint else ""
                known = f"; known keys: {', '.join(allowed)}" if not hint else ""
                raise self.fail(key_node, dotted, f"unknown key{suggestion}{known}")
            if name in seen:
                raise self.fail(key_node, dotted, f"duplicate key (first set on line "
                                                  f"{seen[name].start_mark.line + 1})")
            seen[name] = value_node
        return seen

    @staticmethod
    def _kind(node: yaml.Node) -> str:
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if isinstance(node, yaml.ScalarNode):
            return f"the value {shown(node.value)}" if node.value else "an empty value"
        return "a mapping"

    def parse(self, node: yaml.Node, key: str, parser: Parser) -> Any:
        try:
            return parser(self.value(node, key))
        except ItemError as exc:
            child, dotted = self._item(node, key, exc)
            raise self.fail(child, dotted, str(exc)) from None
        except ValueError as exc:
            raise self.fail(node, key, cut(str(exc), 300)) from None

    def _item(self, node: yaml.Node, key: str, exc: ItemError) -> tuple[yaml.Node, str]:
        """The node and dotted name of the list element or mapping entry an ItemError is about."""
        if isinstance(node, yaml.SequenceNode) and isinstance(exc.item, int) and exc.item < len(node.value):
            return node.value[exc.item], f"{key}[{exc.item}]"
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if self.loader.construct_object(key_node) == exc.item:
                    return key_node if exc.at_key else value_node, f"{key}.{exc.item}"
        return node, key


def _key_name(node: yaml.Node) -> str | None:
    return cut(str(node.value)) if isinstance(node, yaml.ScalarNode) else None


def _children(node: yaml.Node, key: str) -> list[tuple[yaml.Node, str]]:
    """The nodes directly under a collection node (mapping keys too), each with its dotted name."""
    if isinstance(node, yaml.SequenceNode):
        return [(child, f"{key}[{index}]") for index, child in enumerate(node.value)]
    pairs: list[tuple[yaml.Node, str]] = []
    for key_node, child in node.value:
        name = _key_name(key_node)
        dotted = key if name is None else f"{key}.{name}" if key else name
        pairs += [(key_node, dotted), (child, dotted)]
    return pairs


def _syntax_problem(exc: yaml.MarkedYAMLError) -> str:
    """One line from PyYAML's problem/context pair, e.g. an unclosed bracket names the line it opened on."""
    problem = exc.problem or "malformed YAML"
    if "'\\t'" in problem:
        problem += " (YAML does not allow tabs for indentation: use spaces)"
    if exc.context and exc.context.startswith("while") and exc.context_mark is not None:
        return f"{problem} ({exc.context} started on line {exc.context_mark.line + 1})"
    return f"{exc.context}, {problem}" if exc.context else problem
