"""Experiment configs: YAML files validated strictly against a schema before any work.

A schema is a dict of key -> :class:`Field` (or a nested dict for a section).
Every config file names its experiment kind with ``experiment: <kind>``.

    cfg = load_config("configs/mnist_mlp.yaml", overrides=["train.lr=0.1"], schema=...)

Errors are :class:`XnnError` with one line that names the key, the value and what
is allowed; an unknown key also gets the closest valid name and the list of valid keys.
"""
from __future__ import annotations

import copy
import difflib
import math
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from .errors import XnnError

_REQUIRED = object()


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML's safe loader reads it, except that ``1e-3`` and ``1e30`` are numbers
    (YAML 1.2), not the strings YAML 1.1 makes of exponents without a dot."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                 |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                 |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                 |[-+]?\.(?:inf|Inf|INF)
                 |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _load(text: str):
    return yaml.load(text, Loader=_Loader)


@dataclass
class Field:
    """One config key: its type, default and allowed values.

    kind: "int" | "float" | "bool" | "str" | "path" | "list[str]" | "list[float]" |
          "str|list[str]" | "path|list[path]" | "list[int]" | "int|list[int]" | "int|auto"
    """
    kind: str
    default: Any = _REQUIRED
    help: str = ""
    min: float | None = None          # inclusive
    gt: float | None = None           # exclusive lower bound
    max: float | None = None          # inclusive
    choices: tuple | None = None
    nullable: bool = False
    check: Callable[[Any], str | None] | None = field(default=None, repr=False)

    def describe(self) -> str:
        what = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string",
                "path": "a file path", "list[str]": "a list of names", "list[float]": "a list of finite numbers",
                "list[int]": "a list of integers", "str|list[str]": "a name or a list of names",
                "path|list[path]": "a path or a list of paths", "int|list[int]": "an integer or a list of integers",
                "int|auto": "an integer or auto"}[self.kind]
        parts = [what]
        if self.choices:
            parts = ["one of " + ", ".join(map(str, self.choices))]
        if self.gt is not None:
            parts.append(f"> {self.gt}")
        if self.min is not None:
            parts.append(f">= {self.min}")
        if self.max is not None:
            parts.append(f"<= {self.max}")
        if self.nullable:
            parts.append("or null")
        return " ".join(parts)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _convert(f: Field, v):
    """Return the value converted to the field's kind, or raise ValueError."""
    if v is None:
        if f.nullable:
            return None
        raise ValueError
    k = f.kind
    if k == "int":
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise ValueError
        v = int(v)
    elif k == "float":
        if not _is_number(v) or not math.isfinite(v):  # NaN and +-inf pass every `<` range check
            raise ValueError
        v = float(v)
    elif k == "bool":
        if not isinstance(v, bool):
            raise ValueError
    elif k in ("str", "path"):
        if not isinstance(v, str) or not v:
            raise ValueError
    elif k == "int|list[int]":
        v = [_convert(Field("int"), x) for x in v] if isinstance(v, list) and v else _convert(Field("int"), v)
    elif k == "int|auto":
        v = v if v == "auto" else _convert(Field("int"), v)
    elif k in ("str|list[str]", "path|list[path]"):
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
            raise ValueError
    elif k.startswith("list["):
        item = k[5:-1]
        if not isinstance(v, list):
            raise ValueError
        sub = Field(item)
        v = [_convert(sub, x) for x in v]
    return v


def check_value(f: Field, v, key: str):
    """The value converted to the field's kind and checked, or a one-line XnnError naming ``key``."""
    try:
        v = _convert(f, v)
    except ValueError:
        raise XnnError(f"config: {key} = {v!r} is not valid: must be {f.describe()}") from None
    if v is None:
        return v
    items = v if isinstance(v, list) else [v]
    for x in items:
        if f.choices is not None and x not in f.choices:
            raise XnnError(f"config: {key} = {v!r} is not valid: must be {f.describe()}")
        if _is_number(x) and ((f.min is not None and x < f.min) or (f.gt is not None and x <= f.gt)
                              or (f.max is not None and x > f.max)):
            raise XnnError(f"config: {key} = {v!r} is out of range: must be {f.describe()}")
    if f.check is not None:
        problem = f.check(v)
        if problem:
            raise XnnError(f"config: {key} = {v!r} is not valid: {problem}")
    return v


def _unknown(key: str, valid) -> XnnError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return XnnError(f"config: unknown key {key!r}{hint} valid keys here: {', '.join(sorted(valid))}")


def validate(raw: dict, schema: dict, prefix: str = "") -> dict:
    """Check a nested dict against a schema; return a new dict with defaults filled in."""
    if not isinstance(raw, dict):
        raise XnnError(f"config: {prefix.rstrip('.') or 'the file'} must be a mapping of keys to values")
    for key in raw:
        if key not in schema:
            raise _unknown(prefix + str(key), schema)
    out = {}
    for key, spec in schema.items():
        name = prefix + key
        if isinstance(spec, dict):
            section = raw.get(key)
            out[key] = validate({} if section is None else section, spec, name + ".")
        elif key in raw:
            out[key] = check_value(spec, raw[key], name)
        elif spec.default is _REQUIRED:
            raise XnnError(f"config: {name} is required ({spec.describe()}; {spec.help})")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def apply_override(raw: dict, assignment: str, schema: dict) -> None:
    """Apply one ``a.b=value`` override to the raw dict (value parsed as YAML)."""
    if "=" not in assignment:
        raise XnnError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    key, text = assignment.split("=", 1)
    key = key.strip()
    try:
        value = _load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise XnnError(f"--set {assignment}: the value is not valid YAML ({_yaml_problem(e)}); quote it "
                       f"to mean a string, e.g. --set '{key}=\"...\"'") from None
    parts = key.split(".")
    node, spec = raw, schema
    for i, part in enumerate(parts):
        if not isinstance(spec, dict) or part not in spec:
            raise _unknown(".".join(parts[:i + 1]), spec if isinstance(spec, dict) else {})
        if i == len(parts) - 1:
            if isinstance(spec[part], dict):
                raise XnnError(f"--set {key}: {key} is a section; set one of its keys: "
                               f"{', '.join(spec[part])}")
            node[part] = value
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise XnnError(f"config: {'.'.join(parts[:i + 1])} must be a mapping")
            spec = spec[part]


def read_yaml(path) -> dict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise XnnError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise XnnError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                       "save it as UTF-8") from None
    except OSError as e:
        raise XnnError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = _load(text)
    except yaml.YAMLError as e:
        raise XnnError(f"config file {path} is not valid YAML{_yaml_problem(e, where=True)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise XnnError(f"config file {path} must hold a mapping of keys to values")
    return data


def _yaml_problem(e: yaml.YAMLError, where: bool = False) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = str(getattr(e, "problem", None) or e).replace("\n", " ")
    if not where:
        return problem
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{at}: {problem}"


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
