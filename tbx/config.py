"""Typed configs: dataclasses loaded from YAML with ``--set key=value`` overrides.

Every command parses its options into one dataclass (nested dataclasses allowed), which is dumped
as YAML next to its outputs.  Unknown keys and wrongly typed values are user errors.

    cfg = load_config(TrainConfig, "configs/tiny.yaml", ["optim.lr=0.01", "model.backbone=resnet18"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tbx.errors import TbxError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a numeric config field (``None`` bounds are open)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def text(self) -> str:
        bounds = (("≥", self.ge), (">", self.gt), ("≤", self.le), ("<", self.lt))
        return " and ".join(f"{op} {v:g}" for op, v in bounds if v is not None)

    def ok(self, v: float) -> bool:
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )


def bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with a value range, checked whenever a config is loaded
    (:func:`from_dict` / :func:`load_config`) or by :func:`check_fields`::

        batch_size: int = bounded(8, ge=1)
        flip_prob: float = bounded(0.5, ge=0, le=1)
        weights: tuple[float, float] = bounded((1.0, 4.0), gt=0)   # each item
    """
    return dataclasses.field(default=default, metadata={"range": Range(ge, gt, le, lt)})


PROBABILITY = {"ge": 0.0, "le": 1.0}
"""``bounded(0.5, **PROBABILITY)``: a probability in [0, 1]."""


def check_fields(cfg: Any, prefix: str = "") -> None:
    """Check every :func:`bounded` field of ``cfg`` (nested configs included) → :class:`TbxError`
    naming the key, e.g. ``'stage1.batch_size' must be ≥ 1, got 0``."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        return
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        rng = f.metadata.get("range")
        if rng is not None:  # a number, or each item of a tuple/list of numbers
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    if item != item or not rng.ok(item):  # NaN is never in range
                        what = "each item of " if item is not value else ""
                        raise TbxError(
                            f"{what}'{prefix}{f.name}' must be {rng.text()}, got {value!r}",
                            fix=f"set {prefix}{f.name} to {'values' if what else 'a value'} {rng.text()}",
                        )
        check_fields(value, f"{prefix}{f.name}.")


def to_dict(cfg: Any) -> Any:
    """A plain, YAML/JSON-serialisable view of a config (tuples become lists, paths strings)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except TbxError as e:
                errors.append(e)
        raise errors[0] if errors else TbxError(f"bad value {value!r} for '{key}'")
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise TbxError(f"bad value {value!r} for '{key}'", fix=f"use one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TbxError(f"'{key}' must be a mapping, got {value!r}")
        return from_dict(typing.cast(type, tp), value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TbxError(f"'{key}' must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise TbxError(f"'{key}' must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, key) for a, v in zip(args, value))
        inner = args[0] if args else Any
        out = [_coerce(inner, v, key) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise TbxError(f"'{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    raise TbxError(f"bad value {value!r} for '{key}'", fix=f"expected {getattr(tp, '__name__', tp)}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types (missing keys → defaults)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(typing.cast(Any, cls))}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TbxError(
            f"unknown config key '{prefix}{unknown[0]}'", fix=f"valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise TbxError(f"incomplete config for {cls.__name__}: {e}") from None
    check_fields(obj, prefix)
    return obj


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` → nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise TbxError(f"bad override '{item}'", fix="write --set key=value, e.g. --set optim.lr=0.01")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TbxError("config file not found", path, "give an existing YAML file or a preset name")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TbxError(f"invalid YAML: {getattr(e, 'problem', e)}", loc, "fix the syntax") from None
    if not isinstance(data, dict):
        raise TbxError("config must be a YAML mapping", path)
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> T:
    """Defaults of ``cls`` ← ``base`` ← YAML file ← ``--set`` overrides."""
    data = dict(base or {})
    if path is not None:
        data = deep_merge(data, read_yaml(path))
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
