"""Architecture figures (per-stage FLOPs, receptive fields) are right, and predictions keep
working, while other requests run networks beside them: the page loads its tables while a
class clicks "Show me the cat"."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import torch

from cnndemo import anatomy, costs
from cnndemo.runtime import build_random
from cnndemo.zoo import get_spec
from conftest import ROOT

FRESH = ("import json, sys; from cnndemo import anatomy, costs; from cnndemo.zoo import get_spec; "
         "spec = get_spec(sys.argv[1]); print(json.dumps({'flops': {s.name: s.flops for s in costs.stage_costs(spec)},"
         " 'fields': {k: [f.size, f.stride] for k, f in anatomy.receptive_fields(spec).items()}}))")


def _figures(key: str) -> dict:
    spec = get_spec(key)
    return json.loads(json.dumps({"flops": {s.name: s.flops for s in costs.stage_costs(spec)},
                                  "fields": {k: [f.size, f.stride] for k, f in anatomy.receptive_fields(spec).items()}}))


def test_architecture_figures_are_right_while_predictions_run_beside_them(monkeypatch):
    keys = ("googlenet", "inception_v3")
    fresh = {k: json.loads(subprocess.run([sys.executable, "-c", FRESH, k], cwd=ROOT, capture_output=True,
                                          text=True, check=True).stdout) for k in keys}
    model = build_random(get_spec("googlenet")).eval()
    x = torch.randn(1, 3, 224, 224)
    stop = threading.Event()
    started = threading.Barrier(3)
    errors: list[str] = []
    runs = [0]

    def predictions():
        started.wait()
        with torch.no_grad():
            reference = model(x)
            while not stop.is_set():
                try:
                    out = model(x)
                    assert torch.equal(out, reference), "a prediction changed while figures were counted"
                    runs[0] += 1
                except Exception as e:  # reported below
                    errors.append(f"{type(e).__name__}: {e}")
                    return

    threads = [threading.Thread(target=predictions) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        started.wait()
        costs.module_flops.cache_clear()
        anatomy._receptive_fields.cache_clear()
        beside = {k: _figures(k) for k in keys}
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert runs[0] > 0
    assert beside == fresh
    assert sum(fresh["googlenet"]["flops"].values()) == costs.module_flops("googlenet")[0]
