"""Tool schemas derived from the domain's pydantic models."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema, inlined (no ``$ref``) and strict.

    Every property is required and nothing else is allowed, so a model
    calling the tool fills in all of them. Titles and defaults are dropped
    (noise in a prompt). Deterministic: a tool definition must stay
    byte-identical across calls for prompt caching to hit.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            return inline({**target, **{k: v for k, v in node.items() if k != "$ref"}})
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "properties":
                out[key] = {name: inline(sub) for name, sub in value.items()}
            elif key not in ("title", "default"):
                out[key] = inline(value)
        if out.get("type") == "object" and "properties" in out:
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        return out

    result: dict[str, Any] = inline(schema)
    result.pop("description", None)
    return result
