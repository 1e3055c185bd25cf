"""A reader for the subset of the Grafana Alloy configuration syntax that config.alloy uses.

Alloy cannot be installed here, so the tests parse its file themselves: blocks (`name "label" { ... }`),
attributes (`key = value`), strings, numbers, booleans, lists, objects and references to other
components' exports (`loki.write.local.receiver`). Anything else is a syntax error, so the file has to
stay within what this reader (and the tests' checks on top of it) can vouch for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(
    r"""(?P<space>\s+|//[^\n]*|/\*.*?\*/)
      |(?P<string>"(?:\\.|[^"\\\n])*"|`[^`]*`)
      |(?P<number>-?\d+(?:\.\d+)?)
      |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<punct>[{}\[\]=,.])""",
    re.VERBOSE | re.DOTALL,
)


class AlloySyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Reference:
    """An expression naming another component's export, e.g. discovery.docker.containers.targets."""

    path: str


@dataclass
class Block:
    name: str
    label: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)

    def children(self, name: str) -> list[Block]:
        return [b for b in self.blocks if b.name == name]


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            line = text.count("\n", 0, pos) + 1
            raise AlloySyntaxError(f"line {line}: unexpected {text[pos : pos + 20]!r}")
        if match.lastgroup != "space":
            tokens.append((match.lastgroup or "", match.group(), text.count("\n", 0, pos) + 1))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self, offset: int = 0) -> tuple[str, str, int]:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else ("eof", "", -1)

    def take(self, kind: str, value: str | None = None) -> str:
        tkind, tvalue, line = self.peek()
        if tkind != kind or (value is not None and tvalue != value):
            raise AlloySyntaxError(f"line {line}: expected {value or kind}, got {tvalue!r}")
        self.i += 1
        return tvalue

    def body(self, end: str | None) -> Block:
        block = Block(name="", label=None)
        while not (self.peek()[0] == "eof" if end is None else self.peek()[1] == end):
            if self.peek()[0] == "eof":
                raise AlloySyntaxError(f"missing {end!r} at end of file")
            name = self.take("ident")
            if self.peek()[1] == "=":
                self.take("punct", "=")
                if name in block.attributes:
                    raise AlloySyntaxError(f"line {self.peek()[2]}: attribute {name} set twice")
                block.attributes[name] = self.value()
                continue
            while self.peek()[1] == ".":
                self.take("punct", ".")
                name += "." + self.take("ident")
            label = json.loads(self.take("string")) if self.peek()[0] == "string" else None
            self.take("punct", "{")
            inner = self.body("}")
            self.take("punct", "}")
            block.blocks.append(Block(name, label, inner.attributes, inner.blocks))
        return block

    def value(self) -> Any:
        kind, text, line = self.peek()
        if kind == "string":
            self.i += 1
            return text[1:-1] if text.startswith("`") else json.loads(text)
        if kind == "number":
            self.i += 1
            return float(text) if "." in text else int(text)
        if text == "[":
            return self.sequence("[", "]", self.value)
        if text == "{":
            return dict(self.sequence("{", "}", self.item))
        if kind == "ident":
            if text in ("true", "false", "null"):
                self.i += 1
                return {"true": True, "false": False, "null": None}[text]
            path = self.take("ident")
            while self.peek()[1] == ".":
                self.take("punct", ".")
                path += "." + self.take("ident")
            return Reference(path)
        raise AlloySyntaxError(f"line {line}: unexpected {text!r} where a value belongs")

    def item(self) -> tuple[str, Any]:
        kind, text, line = self.peek()
        if kind not in ("ident", "string"):
            raise AlloySyntaxError(f"line {line}: object key expected, got {text!r}")
        self.i += 1
        key = json.loads(text) if kind == "string" else text
        self.take("punct", "=")
        return key, self.value()

    def sequence(self, start: str, end: str, element: Any) -> list[Any]:
        self.take("punct", start)
        items = []
        while self.peek()[1] != end:
            items.append(element())
            if self.peek()[1] != end:
                self.take("punct", ",")
        self.take("punct", end)
        return items


def parse(text: str) -> list[Block]:
    """The top-level blocks of an Alloy configuration file."""
    root = _Parser(text).body(None)
    if root.attributes:
        raise AlloySyntaxError(f"attributes outside any block: {sorted(root.attributes)}")
    return root.blocks


def references(value: Any) -> list[Reference]:
    """Every reference inside an attribute value, however deeply nested."""
    if isinstance(value, Reference):
        return [value]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    return []
