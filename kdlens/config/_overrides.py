"""``key=value`` overrides: parsing (safe YAML with 1.2 booleans, never ``eval``), merging into a config
mapping, and coercing parsed values to a dataclass field's annotated type."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from kdlens._io import load_yaml_text
from kdlens.config._sections import NESTED_SECTIONS

__all__ = ["parse_overrides", "apply_overrides", "checked_keys", "coerce_fields"]


def checked_keys(data: Mapping[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3)
            close += [k for k in known if k not in close and (str(key).startswith(k) or k.startswith(str(key)))]
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ValueError(f"unknown config key {prefix + str(key)!r}{hint} (known: {', '.join(known)})")
    return dict(data)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Coerce a YAML-parsed value to a field's annotated type (``"1e-4"`` -> float, ``"a,b"`` -> list)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if isinstance(value, bool) and bool in args:
            return value
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except (TypeError, ValueError):
                continue
        return value  # let __post_init__ produce the precise message
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError as err:
            raise ValueError(f"{key}={value!r} is not a number") from err
    if hint is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError as err:
            raise ValueError(f"{key}={value!r} is not an integer") from err
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{key}={value!r} is not a boolean (use true/false)")
    if origin is list and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def coerce_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {k: _coerce(v, hints[k], k) for k, v in data.items()}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into a nested dict, values via ``kdlens._io.load_yaml_text``.

    Only ``true``/``false`` are booleans (``mixed_precision=no`` is the string ``"no"``).

    ``lora.r=16`` becomes ``{"lora": {"r": 16}}``. A malformed item raises ValueError naming it.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        try:
            value = load_yaml_text(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # a plain string that YAML cannot parse, e.g. "a: b: c"
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is set to a value and used as a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and (isinstance(current, Mapping) or current is None) \
                and key in NESTED_SECTIONS:
            merged[key] = _merge(dict(current or {}), value)
        elif isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = _merge(dict(current), value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Merge dotted ``key=value`` overrides (or an already nested mapping) into a config mapping."""
    nested = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    return _merge(dict(data), nested)


