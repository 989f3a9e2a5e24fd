"""The package's shape: no import cycles, a core that never reaches up into the app or the CLI,
and package-internal imports at module level (a lazy one hides a cycle or a slow import)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from cnndemo.attribution import METHODS
from cnndemo.cli.common import COMMANDS

PACKAGE = Path(__file__).resolve().parents[1] / "cnndemo"
# 13: the app's launcher (cnndemo.serve) imports the UI only once its options are read, so that
# `python app.py --help` imports no Gradio.
MAX_LOCAL_IMPORTS = 13


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _internal_imports(mods: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """(importer, imported module, inside a function) for every import of a cnndemo module."""
    found = []
    for mod, f in mods.items():
        package = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        tree = ast.parse(f.read_text())
        local = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                name = ".".join(p for p in (base, node.module) if p)
                targets = [f"{name}.{a.name}" if f"{name}.{a.name}" in mods else name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t.startswith("cnndemo") and t != mod:
                    while t not in mods and "." in t:
                        t = t.rsplit(".", 1)[0]
                    found.append((mod, t, id(node) in local))
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_and_the_core_never_imports_the_app_or_the_cli():
    mods = _modules()
    imports = _internal_imports(mods)
    assert len({m for m, _, _ in imports}) > 20  # the scan sees the package
    edges: dict[str, set[str]] = {}
    for src, dst, _local in imports:  # function-local imports count: they are cycles too
        edges.setdefault(src, set()).add(dst)
    assert _cycles(edges) == []
    upward = [(s, d) for s, d, _ in imports
              if not s.startswith(("cnndemo.ui", "cnndemo.cli", "cnndemo.__main__", "cnndemo.serve"))
              and d.startswith(("cnndemo.ui", "cnndemo.cli"))]
    assert upward == []


def test_package_internal_imports_sit_at_module_level():
    local = [(s, d) for s, d, is_local in _internal_imports(_modules()) if is_local]
    assert len(local) <= MAX_LOCAL_IMPORTS, local


def test_a_method_and_a_command_are_each_defined_in_one_place():
    for key, m in METHODS.items():
        assert m.key == key and callable(m.run) and callable(m.passes) and m.name and m.explain
    # Every command is registered by the module of its view (or the diagnostics/space modules).
    for name, (setup, run, _help) in COMMANDS.items():
        assert run.__module__.startswith("cnndemo.cli.") and run.__module__ == setup.__module__, name


# ----------------------------------------------------------------------------- extension points


def test_no_module_reads_the_environment_except_settings():
    readers = []
    for mod, f in _modules().items():
        if mod == "cnndemo.settings":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "unsetenv") \
                    and isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.append(f"{mod}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                    a.name in ("environ", "getenv") for a in node.names):
                readers.append(f"{mod}:{node.lineno}")
    assert readers == []


def test_every_setting_is_in_the_readme_table():
    from cnndemo import settings

    readme = (PACKAGE.parent / "README.md").read_text()
    missing = [name for name, _field, _default in settings.table() if f"| `{name}` |" not in readme]
    assert missing == []


def test_no_handler_returns_a_tuple():
    """Every event that fills several outputs goes through ``by_name``: its function returns
    ``{name: value}``, and the wrapper refuses anything else."""
    import gradio as gr

    from cnndemo.ui import build_demo
    from cnndemo.ui.common import by_name

    demo = build_demo()
    plain = []
    for bf in demo.fns.values():
        if bf.fn is None or len(bf.outputs) < 2 or bf.fn.__module__.startswith("gradio"):
            continue
        f = bf.fn
        while f is not None and not hasattr(f, "__by_name__"):
            f = getattr(f, "__wrapped__", None)
        if f is None:
            plain.append(bf.name)
    assert plain == []
    with gr.Blocks():
        c = {"a": gr.Textbox(), "b": gr.Textbox()}
    handler, _ = by_name(lambda: ("x", "y"), c, ("a", "b"))
    with pytest.raises(TypeError, match="must return"):
        handler()


def test_an_unknown_merge_kind_or_a_wrong_branch_count_is_refused_when_the_spec_is_made():
    from cnndemo.specs import BlockSpec, BranchSpec, SpecError

    two = (BranchSpec("residual", ("a",)), BranchSpec("shortcut"))
    with pytest.raises(SpecError, match="unknown merge 'add'"):
        BlockSpec("block", "block", "Inverted residual", two, merge="add")
    with pytest.raises(SpecError, match="takes 2 branches"):
        BlockSpec("block", "block", "Bottleneck", two + (BranchSpec("third", ("c",)),), merge="add_relu")
    with pytest.raises(SpecError, match="repeat"):
        BlockSpec("block", "block", "Inception", (two[0], two[0]))
    # The zoo builds every spec at import: a block naming a merge the table lacks stops the import.
    code = ("from cnndemo import specs; del specs.MERGES['add_relu']\n"
            "try:\n    import cnndemo.zoo\nexcept specs.SpecError as e:\n    print('refused:', e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120)
    assert "refused: block " in out.stdout and "unknown merge 'add_relu'" in out.stdout, out.stdout + out.stderr


def test_branches_that_do_not_tile_the_block_output_are_refused(monkeypatch):
    import dataclasses

    from cnndemo.branches import block_infos
    from cnndemo.specs import SpecError
    from cnndemo.zoo import ZOO

    spec = ZOO["mnist_inception"]
    block = spec.block("incept1")
    short = dataclasses.replace(block, branches=block.branches[:-1])  # one branch forgotten
    broken = dataclasses.replace(spec, key="tiling_test", blocks=(short,), default_block="incept1")
    monkeypatch.setitem(ZOO, "tiling_test", broken)
    with pytest.raises(SpecError, match="tiling_test/incept1"):
        block_infos(broken)


def test_a_new_family_appears_in_the_model_menus(monkeypatch):
    import dataclasses

    import gradio as gr

    from cnndemo.ui import explore
    from cnndemo.ui.common import model_choices
    from cnndemo.zoo import ZOO

    new = dataclasses.replace(ZOO["mnist_resnet"], key="family_test", name="Tiny net", family="Mobile")
    monkeypatch.setitem(ZOO, "family_test", new)
    assert ("Mobile · Tiny net", "family_test") in model_choices()
    assert ("Mobile · Tiny net", "family_test") in model_choices("digit")
    with gr.Blocks():
        c = explore.build(gr.State(None), gr.State("light"))
    assert ("Mobile · Tiny net", "family_test") in [tuple(ch) for ch in c["model"].choices]


def test_guided_methods_refuse_a_model_with_activations_they_cannot_guide(monkeypatch, tmp_path):
    import dataclasses

    from torch import nn

    from cnndemo.archs.mnist import mnist_resnet
    from cnndemo.attribution import METHODS, attribute, supported
    from cnndemo.errors import BadRequest
    from cnndemo.zoo import ZOO

    def with_relu6():
        m = mnist_resnet()
        m.relu1 = nn.ReLU6()
        return m

    spec = dataclasses.replace(ZOO["mnist_resnet"], key="relu6_test", builder=with_relu6)
    monkeypatch.setitem(ZOO, "relu6_test", spec)
    assert "ReLU6" in supported(METHODS["guided_backprop"], spec)
    assert "ReLU6" in supported(METHODS["guided_gradcam"], spec)
    assert supported(METHODS["ig"], spec) is None
    assert all(supported(m, ZOO[k]) is None for m in METHODS.values() for k in ZOO if k in ("googlenet", "mnist_resnet"))
    six = PACKAGE.parent / "assets" / "examples" / "digits" / "six.png"
    with pytest.raises(BadRequest, match="ReLU6"):
        attribute(str(six), "relu6_test", "guided_backprop", scores=False)


def test_a_method_with_a_new_knob_gets_its_slider_api_parameter_and_cli_flag(monkeypatch, capsys):
    """One Method entry, declared here, and nothing else: the Attributions tab has its slider,
    /attribute its parameter, the CLI its flag (range-checked), and the value reaches the method."""
    import json

    import gradio as gr

    from cnndemo.attribution import METHODS, Knob, Method, Settings, ca
    from cnndemo.cli import main
    from cnndemo.ui import attributions

    radius = Knob("radius", "Smoothing radius (px)", 1, 9, 3, "how far the map is smoothed")
    seen = []

    def run(c):
        seen.append(c.settings.radius)
        return ca().Saliency(c.model).attribute(c.x, target=c.target, abs=True)

    monkeypatch.setitem(METHODS, "smooth_test", Method("smooth_test", "Smoothed saliency", "pixel", False,
                                                       "saliency, smoothed", run, knobs=(radius,)))
    assert Settings().radius == 3 and Settings(radius=5).radius == 5
    with gr.Blocks() as demo:
        attributions.build(gr.State(None), gr.State("light"))
    sliders = [b for b in demo.blocks.values() if isinstance(b, gr.Slider) and b.label == "Smoothing radius (px)"]
    assert len(sliders) == 1 and (sliders[0].minimum, sliders[0].maximum, sliders[0].value) == (1, 9, 3)
    params = demo.get_api_info()["named_endpoints"]["/attribute"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert names[:9] == ["image", "model", "method", "target", "layer", "steps", "samples", "window", "stride"]
    assert "radius" in names and next(p for p in params if p["parameter_name"] == "radius")["parameter_default"] == 3

    six = str(PACKAGE.parent / "assets" / "examples" / "digits" / "six.png")
    assert main(["attribute", "--model", "mnist_resnet", "--method", "smooth_test", "--radius", "7", "--no-scores",
                 "--json", six]) == 0
    assert seen == [7] and json.loads(capsys.readouterr().out)["method"] == "smooth_test"
    assert main(["attribute", "--model", "mnist_resnet", "--method", "smooth_test", "--radius", "12", "--json", six]) == 1
    assert "radius" in capsys.readouterr().out and seen == [7]


def test_one_methods_failure_stays_in_its_cell_of_the_grid_and_leaves_a_traceback(monkeypatch, caplog):
    import asyncio
    import logging

    from cnndemo.attribution import METHODS, Method
    from cnndemo.ui import attributions

    def broken(c):
        raise RuntimeError("boom")

    monkeypatch.setitem(METHODS, "broken_test", Method("broken_test", "Broken", "pixel", False, "always fails", broken))
    titles = []
    real = attributions.render.attribution_grid
    monkeypatch.setattr(attributions.render, "attribution_grid",
                        lambda items, t, **kw: titles.extend(t) or real(items, t, **kw))
    six = str(PACKAGE.parent / "assets" / "examples" / "digits" / "six.png")
    with caplog.at_level(logging.ERROR, logger="cnndemo"):
        grid = asyncio.run(attributions.run_all_methods(six, "mnist_resnet", progress=lambda *a, **k: None))
    assert grid.size[0] > 300
    assert next(t for t in titles if t.startswith("Broken")) == "Broken: failed\nRuntimeError: boom"
    assert sum(t.startswith(("Integrated Gradients\n", "Saliency\n", "Occlusion\n")) for t in titles) == 3
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


# ----------------------------------------------------------------------------- errors


def test_refusals_are_shown_as_they_are_and_bugs_leave_a_traceback_in_the_log(caplog):
    import logging

    from cnndemo.errors import BadRequest, NotFound
    from cnndemo.ui.common import as_gr_error

    with caplog.at_level(logging.ERROR, logger="cnndemo"):
        assert as_gr_error(NotFound("no block 'x'"), "h").message == "no block 'x'"
        assert as_gr_error(BadRequest("steps must be 4-128"), "h").message == "steps must be 4-128"
        assert caplog.records == []
        try:
            {}["missing"]
        except KeyError as e:
            shown = as_gr_error(e, "some_handler")
    assert shown.message.startswith("Internal error (KeyError)")
    (record,) = caplog.records
    assert "some_handler" in record.getMessage() and record.exc_info[0] is KeyError


def test_an_unreadable_benchmark_reference_is_left_out_and_said_in_the_log(monkeypatch, tmp_path, caplog):
    import json
    import logging

    from cnndemo import bench

    (tmp_path / "good.json").write_text(json.dumps({"environment": {"date": "2026-01-01"}, "results": []}))
    (tmp_path / "broken.json").write_text("{not json")
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)
    with caplog.at_level(logging.WARNING, logger="cnndemo"):
        files = bench.reference_files()
    assert [f["file"] for f in files] == ["good.json"]
    assert any("broken.json" in r.getMessage() for r in caplog.records)


def test_settings_are_read_from_the_environment_once_with_their_defaults():
    from cnndemo import settings

    s = settings.read({"CNNDEMO_WORKERS": "4", "CNNDEMO_OFFLINE": "yes", "CNNDEMO_QUEUE_PER_IP": "lots",
                       "CNNDEMO_UPLOAD_QUOTA": "500mb", "CNNDEMO_WORK_BUDGET_TFLOP": "2.5"})
    assert (s.workers, s.offline, s.queue_per_ip, s.work_budget_tflop) == (4, True, 16, 2.5)  # "lots" keeps 16
    assert s.upload_quota_bytes == 500 * 2**20 and s.hops == 0 and s.max_image_bytes == 25 * 2**20
    assert settings.read({"SPACE_ID": "a/b"}).hops == 1 and settings.read({"SPACE_ID": "a/b", "CNNDEMO_PROXY_HOPS": "2"}).hops == 2
    assert settings.get() is settings.get()  # one record, read once
