"""The docstring under each config field (`x: int = 1` then `\"\"\"What x is.\"\"\"`), read from the source when
asked for: `cmtwin config schema` and the generated docs show them. Pydantic's `use_attribute_docstrings` would
read every model's source at import instead, a tenth of `cmtwin plan`'s start."""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from functools import cache
from typing import Any

from pydantic import BaseModel


@cache
def field_docs(model: type[BaseModel]) -> dict[str, str]:
    """{field name: its docstring} of a model and the models it inherits from (the nearest definition wins)."""
    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                out[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return {k: v for k, v in out.items() if k in model.model_fields}


def models_under(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The model and every model its fields hold, at any depth (each once)."""
    seen: list[type[BaseModel]] = []

    def walk(m: type[BaseModel]) -> None:
        if m in seen:
            return
        seen.append(m)
        for field in m.model_fields.values():
            for sub in _models(field.annotation):
                walk(sub)

    walk(model)
    return seen


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models(a)]


def schema_with_docs(model: type[BaseModel]) -> dict:
    """The model's JSON schema with each field's docstring as its description."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    for m in models_under(model):
        node = schema if m is model else defs.get(m.__name__)
        props = (node or {}).get("properties", {})
        for name, doc in field_docs(m).items():
            field = m.model_fields[name]
            prop = props.get(field.alias or name)
            if prop is not None:
                prop.setdefault("description", doc)
    return schema
