"""Per-stage FLOPs are counted right while other requests run networks beside the count."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import torch

from cnndemo import profile
from cnndemo.runtime import build_random
from cnndemo.zoo import get_spec
from conftest import ROOT

FRESH = "import json, sys; from cnndemo import profile; from cnndemo.zoo import get_spec; " \
        "print(json.dumps({s.name: s.flops for s in profile.stage_costs(get_spec(sys.argv[1]))}))"


def test_stage_flops_are_right_while_predictions_run_beside_them():
    key = "googlenet"
    fresh = json.loads(subprocess.run([sys.executable, "-c", FRESH, key], cwd=ROOT, capture_output=True, text=True,
                                      check=True).stdout)
    model = build_random(get_spec(key)).eval()
    x = torch.randn(1, 3, 224, 224)
    stop = threading.Event()
    started = threading.Barrier(3)

    def predictions():
        started.wait()
        with torch.no_grad():
            while not stop.is_set():
                model(x)

    threads = [threading.Thread(target=predictions) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        started.wait()
        profile.module_flops.cache_clear()
        beside = {s.name: s.flops for s in profile.stage_costs(get_spec(key))}
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert beside == fresh
    assert sum(fresh.values()) == profile.module_flops(key)[0]
