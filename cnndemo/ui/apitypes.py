"""What the API and its MCP tools say about each endpoint, made to match what the handlers take.

Gradio derives a tool's name from the handler's Python name, and a parameter's schema from its
component as first built. Four things follow that an agent cannot work with:

- tools named after handlers (``attribute_steps`` for ``/attribute``, ``run_compare_1`` for
  ``/compare``): each public handler is named after its endpoint;
- a dropdown whose names depend on the model (a block, a branch, a Grad-CAM layer, a target
  class) lists only the first model's names as an enum, so other models' names, and "" for
  the default, are refused by the schema: those take free text, checked by the handler with a
  clear message (they accept custom values already);
- choices that are numbers (batch sizes) are declared as strings with a numeric enum, which no
  value satisfies: they are declared as integers;
- a file parameter is described by Gradio's own FileData docstring: it says what to send.
"""

from __future__ import annotations

import gradio as gr

FILE = "the file itself: an upload (gradio_client: handle_file(path)); a path on the server is refused"


def _free_text(comp: gr.Dropdown) -> dict:
    text = {"type": "string"}
    return {"type": "array", "items": text} if comp.multiselect else text


def _whole_numbers(comp) -> dict | None:
    values = [value for _, value in comp.choices]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    item = {"type": "integer", "enum": values}
    many = isinstance(comp, gr.CheckboxGroup) or getattr(comp, "multiselect", False)
    return {"type": "array", "items": item} if many else item


def _declare(comp, schema: dict) -> None:
    """Set on the instance (a subclass would make Gradio write a .pyi stub)."""
    comp.api_info = lambda: dict(schema)


def install(demo: gr.Blocks) -> None:
    """Name each public handler after its endpoint, and declare its inputs' types as above."""
    names: dict[int, str] = {}
    for block_fn in demo.fns.values():
        if block_fn.fn is None or not block_fn.api_name or block_fn.api_visibility == "private":
            continue
        first = names.setdefault(id(block_fn.fn), block_fn.api_name)
        if first != block_fn.api_name:
            raise RuntimeError(f"/{first} and /{block_fn.api_name} share one handler: their tools need one each")
        block_fn.fn.__name__ = block_fn.api_name
        for comp in block_fn.inputs:
            if isinstance(comp, gr.Dropdown) and comp.allow_custom_value:
                _declare(comp, _free_text(comp))
            elif isinstance(comp, (gr.Dropdown, gr.CheckboxGroup, gr.Radio)):
                numbers = _whole_numbers(comp)
                if numbers is not None:
                    _declare(comp, numbers)
            elif type(comp) is gr.File:  # described by Gradio's FileData class docstring, for Python developers
                _declare(comp, {**comp.api_info(), "additional_description": FILE})
