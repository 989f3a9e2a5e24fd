"""A lecture's numbers and results: timings that say what they are, nothing stale on screen."""

from __future__ import annotations

import uuid

from cnndemo.branches import explore
from cnndemo.runtime import STORE, LoadedModel, build_random
from cnndemo.weights import WeightsInfo
from cnndemo.zoo import get_spec
from images_factory import gradient


def _fresh(key: str) -> LoadedModel:
    """A model nobody has run yet, with an identity of its own (so no cached result is shared)."""
    info = WeightsInfo("random", "test init", f"test-{uuid.uuid4().hex}")
    return LoadedModel(get_spec(key), build_random(get_spec(key)).eval(), info, STORE.device)


def test_a_cold_start_or_a_cached_result_is_never_shown_as_this_requests_time():
    lm = _fresh("mnist_resnet")
    first = explore(gradient(64, 64), lm).prediction
    assert first.first_run and not first.cached
    assert "first run on this server" in first.timing("CPU")
    again = explore(gradient(64, 64), lm).prediction
    assert again.cached and again.ms == first.ms
    assert again.timing("CPU").startswith("no forward pass for this request")
    assert f"{first.ms:.1f} ms on CPU then" in again.timing("CPU")
    other = explore(gradient(64, 48), lm).prediction
    assert not other.first_run and not other.cached
    assert other.timing("CPU") == f"forward pass {other.ms:.1f} ms on CPU"
    assert again.to_json()["cached"] is True and first.to_json()["first_run"] is True


def test_a_new_model_or_image_empties_every_result_at_once():
    from cnndemo.ui.explore import results_pending

    out = results_pending("inception_v3", "inception5b", "cat.jpg", new_model=True)
    for name in ("label", "seen", "json", "panel", "share_plot", "depth_plot", "branch_table", "branch_json",
                 "branch_view"):
        assert out[name] is None, name
    assert "Inception-v3" in out["info"] and "Computing" in out["info"]
    assert out["block"].value == get_spec("inception_v3").default_block != "inception5b"
    assert "inception5b" not in out["block"].choices
    kept = results_pending("googlenet", "inception3a", "cat.jpg", new_model=False)
    assert "block" not in kept and "inception3a" in kept["block_note"]


def test_the_clearing_runs_in_the_browser_without_the_queue():
    """The emptying must not wait behind the network-running events it announces."""
    import app

    outputs_of = {}
    for fn in app.demo.fns.values():
        if fn.queue is False and any(t[1] == "change" for t in fn.targets):
            outputs_of.setdefault(fn.name, set()).update(getattr(o, "elem_id", None) for o in fn.outputs)
    assert any("explore-top5" in ids and "explore-panel" in ids for ids in outputs_of.values()), outputs_of
