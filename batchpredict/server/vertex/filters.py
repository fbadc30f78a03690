"""The `filter` of a list call, as Vertex reads it (a subset of AIP-160), compiled to a predicate.

    state="JOB_STATE_SUCCEEDED"            display_name="x"         display_name:"my_job_*"
    create_time>"2021-05-18T00:00:00Z"     labels.team=ml           labels.team:*
    NOT state="JOB_STATE_FAILED" AND (labels.team=ml OR model:"*flash*")

Grammar: `expr := and (OR and)*`, `and := unary ((AND)? unary)*` (juxtaposition means AND, as in
AIP-160), `unary := (NOT | -) unary | "(" expr ")" | field op value`, with op one of
`= != < <= > >= :`. Values are quoted strings or bare words. `:` is "has": `field:*` is true
when the field is set, any other value matches as a wildcard pattern (`*` matches anything).
Times compare as instants; `state` accepts `SUCCEEDED` as well as `JOB_STATE_SUCCEEDED`. Field
names are accepted in snake_case and camelCase. Anything else is a 400 saying what is wrong.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batchpredict.errors import InvalidArgument
from batchpredict.jobs import Job, JobState, parse_time

__all__ = ["FIELDS", "compile_filter"]

Predicate = Callable[[Job], bool]
#: Longest filter and deepest nesting (NOT, -, parentheses) accepted; beyond, a 400.
MAX_FILTER_CHARS = 8192
MAX_DEPTH = 32

_TIME_FIELDS = {
    "create_time": lambda j: j.create_time,
    "start_time": lambda j: j.start_time,
    "end_time": lambda j: j.end_time,
    "update_time": lambda j: j.update_time,
}
_TEXT_FIELDS: dict[str, Callable[[Job], str | None]] = {
    "state": lambda j: j.state.value,
    "display_name": lambda j: j.display_name,
    "model": lambda j: j.model,
    "name": lambda j: j.name,
}
#: What a filter may name (besides `labels.KEY`).
FIELDS = sorted([*_TEXT_FIELDS, *_TIME_FIELDS, "labels.KEY"])
_CAMEL = {"displayName": "display_name", "createTime": "create_time", "startTime": "start_time",
          "endTime": "end_time", "updateTime": "update_time"}

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<lparen>\() | (?P<rparen>\)) |
        (?P<op><=|>=|!=|=|<|>|:) |
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*') |
        (?P<minus>-(?=[\w(]))|
        (?P<word>[^\s()=<>!:"']+)
    )""",
    re.VERBOSE,
)


@dataclass
class _Token:
    kind: str  # lparen rparen op string word minus end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise _error(text, pos, f"unexpected character {text[pos:].lstrip()[:1]!r}")
        kind = m.lastgroup or "word"
        value = m.group(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append(_Token(kind, value, m.start(kind)))
        pos = m.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _error(text: str, pos: int, what: str) -> InvalidArgument:
    return InvalidArgument(
        f"Invalid filter {text!r}: {what} at position {pos}. Write conditions such as "
        'state="JOB_STATE_SUCCEEDED", display_name:"my_job_*", '
        'create_time>"2021-05-18T00:00:00Z" or labels.team=ml, joined by AND, OR, NOT and '
        "parentheses."
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_keyword(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "word" and tok.text == word

    def parse(self) -> Predicate:
        pred = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise _error(self.text, tok.pos, f"unexpected {tok.text!r}")
        return pred

    def expr(self) -> Predicate:
        parts = [self.conjunction()]
        while self.is_keyword("OR"):
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else lambda j: any(p(j) for p in parts)

    def conjunction(self) -> Predicate:
        parts = [self.unary()]
        while True:
            tok = self.peek()
            if tok.kind in ("end", "rparen") or self.is_keyword("OR"):
                break
            if self.is_keyword("AND"):
                self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else lambda j: all(p(j) for p in parts)

    def unary(self) -> Predicate:
        tok = self.peek()
        self.depth += 1  # security: no RecursionError from NOT NOT ... or ((((...
        if self.depth > MAX_DEPTH:
            raise _error(self.text, tok.pos, f"nested more than {MAX_DEPTH} levels deep")
        try:
            return self._unary(tok)
        finally:
            self.depth -= 1

    def _unary(self, tok: _Token) -> Predicate:
        if self.is_keyword("NOT") or tok.kind == "minus":
            self.take()
            inner = self.unary()
            return lambda j: not inner(j)
        if tok.kind == "lparen":
            self.take()
            inner = self.expr()
            close = self.take()
            if close.kind != "rparen":
                raise _error(self.text, close.pos, "missing ')'")
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        field_tok = self.take()
        if field_tok.kind != "word" or field_tok.text in ("AND", "OR", "NOT"):
            what = "end of filter" if field_tok.kind == "end" else repr(field_tok.text)
            raise _error(self.text, field_tok.pos, f"expected a field name, found {what}")
        op = self.take()
        if op.kind != "op":
            raise _error(
                self.text, op.pos, f"expected an operator (= != < <= > >= :) after {field_tok.text}"
            )
        value = self.take()
        if value.kind not in ("string", "word"):
            raise _error(self.text, value.pos, f"expected a value after {field_tok.text}{op.text}")
        return self.condition(field_tok, op.text, value.text)

    def condition(self, field_tok: _Token, op: str, value: str) -> Predicate:
        name = _CAMEL.get(field_tok.text, field_tok.text)
        if name.startswith("labels."):
            key = name.removeprefix("labels.")
            return _text_condition(lambda j: j.labels.get(key), op, value)
        if name in _TIME_FIELDS:
            return _time_condition(self.text, field_tok, _TIME_FIELDS[name], op, value)
        if name == "state":
            value = _state_value(value)
        if name in _TEXT_FIELDS:
            return _text_condition(_TEXT_FIELDS[name], op, value)
        raise InvalidArgument(
            f"Invalid filter {self.text!r}: unknown field {field_tok.text!r}. Fields: "
            f"{', '.join(FIELDS)}."
        )


def _state_value(value: str) -> str:
    if value == "*" or "*" in value:
        return value
    full = value if value.startswith("JOB_STATE_") else f"JOB_STATE_{value}"
    if full not in JobState.__members__:
        raise InvalidArgument(
            f"Invalid filter: {value!r} is not a job state. States: "
            f"{', '.join(s.value for s in JobState)}."
        )
    return full


def _compare(a: Any, op: str, b: Any) -> bool:
    if op == "=":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _text_condition(get: Callable[[Job], str | None], op: str, value: str) -> Predicate:
    if op == ":":
        if value == "*":
            return lambda j: get(j) is not None
        return lambda j: (v := get(j)) is not None and fnmatch.fnmatchcase(v, value)

    def check(j: Job) -> bool:
        v = get(j)
        if v is None:
            return op == "!="
        return _compare(v, op, value)

    return check


def _time_condition(
    text: str, field_tok: _Token, get: Callable[[Job], datetime | None], op: str, value: str
) -> Predicate:
    if op == ":":
        if value == "*":
            return lambda j: get(j) is not None
        raise _error(text, field_tok.pos, f"{field_tok.text} takes = != < <= > >=, not ':'")
    try:
        when = parse_time(value)
        if when is None or when.tzinfo is None:
            raise ValueError(value)
    except ValueError:
        raise InvalidArgument(
            f"Invalid filter {text!r}: {value!r} is not an RFC 3339 time; write it as "
            f'{field_tok.text}>"2021-05-18T00:00:00Z".'
        ) from None

    def check(j: Job) -> bool:
        v = get(j)
        return v is not None and _compare(v, op, when)

    return check


class Filter:
    """A compiled filter: call it on a job. `states` is the set of states every matching job
    is in (a top-level `state="X"`), or None: the job store narrows its query by it."""

    def __init__(self, predicate: Predicate, states: frozenset[JobState] | None) -> None:
        self.predicate = predicate
        self.states = states

    def __call__(self, job: Job) -> bool:
        return self.predicate(job)


def compile_filter(text: str | None) -> Filter:
    """A predicate over jobs for a list `filter`; everything passes when it is empty."""
    if not text or not text.strip():
        return Filter(lambda j: True, None)
    if len(text) > MAX_FILTER_CHARS:  # security: bounded parse and evaluation
        raise InvalidArgument(
            f"The filter is {len(text)} characters long; the limit is {MAX_FILTER_CHARS}. "
            "Use fewer conditions (labels.team:* matches every value of a label)."
        )
    return Filter(_Parser(text).parse(), _required_states(_tokenize(text)))


def _required_states(tokens: list[_Token]) -> frozenset[JobState] | None:
    """The state a filter pins at its top level: no OR outside parentheses, and a
    `state = VALUE` (no wildcard) there not under NOT."""
    depth, found = 0, None
    for i, tok in enumerate(tokens):
        depth += (tok.kind == "lparen") - (tok.kind == "rparen")
        if depth or tok.kind != "word":
            continue
        if tok.text == "OR":
            return None
        negated = i > 0 and (tokens[i - 1].kind == "minus" or tokens[i - 1].text == "NOT")
        if (tok.text == "state" and not negated and tokens[i + 1].text == "="
                and tokens[i + 2].kind in ("string", "word") and "*" not in tokens[i + 2].text):
            found = JobState(_state_value(tokens[i + 2].text))
    return None if found is None else frozenset({found})
