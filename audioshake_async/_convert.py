"""The one cattrs converter factory: camelCase JSON <-> snake_case attrs models.

Rules, in one place:
- field names are renamed by a hook factory (``transcript_url`` <-> ``transcriptUrl``), never by
  hand-written per-class hooks;
- unknown JSON fields are ignored (the service adds fields over time);
- a JSON ``null`` for a field whose default is not ``None`` (``"output": null``) takes the default;
- datetimes are ISO 8601 with a ``Z`` suffix and milliseconds, as the service sends them;
- ``None`` fields are left out of request bodies.

Hooks for ``X | None`` and ``tuple[X, ...]`` resolve the inner hook once, when the model's
structuring function is generated, instead of on every value (cattrs' generic handlers dispatch
per call): parsing a task takes about a quarter less CPU, same results.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

__all__ = ["camel_case", "converter", "format_datetime", "make_converter", "parse_datetime"]

T = TypeVar("T")


def camel_case(name: str) -> str:
    """``transcript_asset_id`` -> ``transcriptAssetId``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def parse_datetime(value: str | dt.datetime) -> dt.datetime:
    """Parse an ISO 8601 timestamp (``Z`` or an offset) into an aware datetime."""
    if isinstance(value, dt.datetime):
        return value
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def format_datetime(value: dt.datetime) -> str:
    """Format as the service does: UTC, milliseconds, ``Z``."""
    utc = value.astimezone(dt.timezone.utc) if value.tzinfo else value
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _parse_decimal(value: Any, _: type) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {value!r}") from exc


def _passthrough(value: Any, _: Any) -> Any:
    return value


def _is_optional(t: Any) -> bool:
    """``X | None`` / ``Optional[X]`` with exactly one other member."""
    args = typing.get_args(t)
    return (
        typing.get_origin(t) in (typing.Union, types.UnionType)
        and len(args) == 2
        and type(None) in args
    )


def _is_homogeneous_tuple(t: Any) -> bool:
    """``tuple[X, ...]`` with a concrete ``X``."""
    args = typing.get_args(t)
    return (
        typing.get_origin(t) is tuple
        and len(args) == 2
        and args[1] is Ellipsis
        and args[0] is not Any
    )


def make_converter() -> cattrs.Converter:
    """Build a converter for every model of the package (a fresh one each call)."""
    conv = cattrs.Converter(forbid_extra_keys=False, detailed_validation=False)

    conv.register_structure_hook(dt.datetime, lambda v, _: parse_datetime(v))
    conv.register_unstructure_hook(dt.datetime, format_datetime)
    conv.register_structure_hook(Decimal, _parse_decimal)
    conv.register_unstructure_hook(Decimal, str)
    # An error ``code`` is documented as a number; keep whatever scalar arrives.
    conv.register_structure_hook_func(lambda t: t == (float | int | str | None), _passthrough)

    def optional_factory(t: Any) -> Callable[[Any, Any], Any]:
        inner_type = next(a for a in typing.get_args(t) if a is not type(None))
        inner = conv.get_structure_hook(inner_type)
        if inner is cattrs.BaseConverter._structure_call:
            # ``str | None`` and the like: cattrs' hook is ``inner_type(value)``; call it here.
            def structure_scalar(value: Any, _: Any) -> Any:
                return None if value is None else inner_type(value)

            return structure_scalar

        def structure_optional(value: Any, _: Any) -> Any:
            return None if value is None else inner(value, inner_type)

        return structure_optional

    def tuple_factory(t: Any) -> Callable[[Any, Any], Any]:
        item_type = typing.get_args(t)[0]
        item = conv.get_structure_hook(item_type)

        def structure_tuple(value: Any, _: Any) -> Any:
            return tuple([item(v, item_type) for v in value])

        return structure_tuple

    conv.register_structure_hook_factory(_is_optional, optional_factory)
    conv.register_structure_hook_factory(_is_homogeneous_tuple, tuple_factory)

    def structure_factory(cls: type[Any]) -> Callable[[Any, Any], Any]:
        fields = attrs.fields(cls)
        overrides = {f.name: override(rename=camel_case(f.name)) for f in fields}
        inner = make_dict_structure_fn(cls, conv, **overrides)  # type: ignore[arg-type]
        non_null = frozenset(
            camel_case(f.name)
            for f in fields
            if f.default is not None and f.default is not attrs.NOTHING
        )

        def structure(data: Any, target: Any) -> Any:
            if not isinstance(data, dict):
                raise ValueError(
                    f"expected an object for {cls.__name__}, got {type(data).__name__}"
                )
            # ``None in values()`` is a C-level scan: most objects skip the per-key check.
            if None in data.values() and any(data.get(k, 0) is None for k in non_null):
                data = {k: v for k, v in data.items() if not (v is None and k in non_null)}
            return inner(data, target)

        def structure_plain(data: Any, target: Any) -> Any:
            if not isinstance(data, dict):
                raise ValueError(
                    f"expected an object for {cls.__name__}, got {type(data).__name__}"
                )
            return inner(data, target)

        return structure if non_null else structure_plain

    def unstructure_factory(cls: type[Any]) -> Callable[[Any], Any]:
        overrides = {
            f.name: override(rename=camel_case(f.name), omit_if_default=f.default is None)
            for f in attrs.fields(cls)
        }
        return make_dict_unstructure_fn(cls, conv, **overrides)  # type: ignore[arg-type]

    conv.register_structure_hook_factory(attrs.has, structure_factory)
    conv.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    return conv


#: The package-wide default instance.
converter = make_converter()


def structure(data: Any, cls: type[T]) -> T:
    """Structure JSON-shaped data into ``cls`` with the default converter."""
    return converter.structure(data, cls)


def unstructure(obj: Any) -> Any:
    """Unstructure a model into JSON-shaped data with the default converter."""
    return converter.unstructure(obj)
