"""Request bodies read by JSON's types, as the OpenAPI document states them.

pydantic's lax mode turns a JSON "5" into 5 and a 0 into false, which the document does not allow;
its strict mode refuses 5.0 for an integer (JSON Schema calls it one) and, on the dicts FastAPI
hands over, every enum value. This check sits between: numbers must be JSON numbers (an integer may
be written 5.0), booleans JSON booleans, strings JSON strings; pydantic does the rest.
"""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, model_validator

SCALARS = (bool, int, float, str)


def _options(annotation: Any) -> list[Any]:
    return list(get_args(annotation)) if get_origin(annotation) in (Union, types.UnionType) else [annotation]


def _scalars(annotation: Any) -> set[type]:
    return {a for a in _options(annotation) if a in SCALARS}


def _item_scalars(annotation: Any) -> set[type] | None:
    """For a list field, the scalar types of its items (None: not a list of scalars)."""
    for option in _options(annotation):
        if get_origin(option) is list and get_args(option):
            return _scalars(get_args(option)[0])
    return None


def _fits(value: Any, kinds: set[type]) -> bool:
    if value is None or not kinds:
        return True
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return bool(kinds & {int, float})
    if isinstance(value, float):
        return float in kinds or (int in kinds and value.is_integer())
    if isinstance(value, str):
        return str in kinds or not kinds & {bool, int, float}  # an enum's value, say
    return True


def _say(kinds: set[type]) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    return " or ".join(sorted(names[k] for k in kinds))


class JsonTyped(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _json_types(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            value = data.get(field.alias or name)
            items = _item_scalars(field.annotation)
            if isinstance(value, list) and items is not None:
                bad = next((v for v in value if not _fits(v, items)), None)
                if bad is not None:
                    raise ValueError(f"{name}: each item must be a JSON {_say(items)}, not {bad!r}")
            elif not _fits(value, _scalars(field.annotation)):
                raise ValueError(f"{name} must be a JSON {_say(_scalars(field.annotation))}, not {value!r}")
        return data
