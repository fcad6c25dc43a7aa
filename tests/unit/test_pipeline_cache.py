"""The model cache keeps what fits its byte budget, least recently used dropped first."""

from __future__ import annotations

import pytest

from alice.engine.demo import save_untrained_demo
from alice.engine.pipelines import PipelineCache, choose_placement, pipeline_bytes


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for seed, name in enumerate(("a", "b", "c")):
        save_untrained_demo(root / name, seed=seed)
    return root


def cache(folders, budget):
    loads = []
    return PipelineCache(lambda name: folders / name, choose_placement("cpu"), budget,
                         on_load=lambda name, seconds: loads.append(name)), loads


def test_budget_for_two_keeps_the_two_most_recent(folders):
    one = pipeline_bytes(cache(folders, 1 << 40)[0].get("a").pipe)
    pipelines, loads = cache(folders, int(one * 2.5))
    pipelines.get("a"), pipelines.get("b"), pipelines.get("a"), pipelines.get("c")
    assert pipelines.names() == ["a", "c"]  # b was least recently used
    assert loads == ["a", "b", "c"]
    assert pipelines.used_bytes() <= int(one * 2.5)


def test_a_model_bigger_than_the_budget_still_loads_alone(folders):
    pipelines, _ = cache(folders, 1)
    pipelines.get("a")
    pipelines.get("b")
    assert pipelines.names() == ["b"]


def test_drop_all_but(folders):
    pipelines, _ = cache(folders, 1 << 40)
    for name in "abc":
        pipelines.get(name)
    pipelines.drop_all_but("b")
    assert pipelines.names() == ["b"]
