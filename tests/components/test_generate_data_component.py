"""The generate-data components: shard + merge through their Python functions, and fanned out under kfp.local.

No `from __future__ import annotations` here: kfp reads the real annotations of components.
"""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

FIXTURES = REPO / "tests" / "data" / "fixtures"
OVERRIDES = [
    f"principles_file={FIXTURES / 'principles_colour.yaml'}",
    "judging.attribute=toy-attribute",
    "judging.concept=toy-concept",
    "judging.accept_all=true",
    "candidates_per_scene=1",
    "num_inference_steps=2",
    "max_prompts_per_principle=null",  # every fixture prompt, whatever the tiny preset's own cap
]


class _Metrics:
    def __init__(self):
        self.logged = {}

    def log_metric(self, name, value):
        self.logged[name] = value


def test_shards_then_merge_through_the_component_functions(tmp_path):
    import torch

    from components.generate_data import generate_data_shard, merge_data_shards
    from livo.data.dataset import load_preference_dataset
    from livo.errors import DataError

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny work: one thread is faster on a busy machine
    try:
        out = str(tmp_path / "ds")
        uris = [generate_data_shard.python_func(dataset_uri=out, shard_index=i, shard_count=2, preset="tiny",
                                                config_overrides=OVERRIDES, device="cpu") for i in (1, 0)]
    finally:
        torch.set_num_threads(threads)
    assert set(uris) == {str(Path(out).resolve())}
    assert not (tmp_path / "ds" / "manifest.json").exists()  # shard tasks never write the manifest
    from kfp import dsl

    from livo.store import sha256_file

    metrics, dataset = _Metrics(), dsl.Dataset(uri=str(tmp_path / "kfp" / "dataset"))
    assert merge_data_shards.python_func(dataset_uri="", shard_count=2, metrics=metrics, dataset=dataset,
                                         shard_uris=uris) == uris[0]
    # the Dataset artifact: a pointer to the dataset with its manifest's digest (what lineage records)
    assert json.loads(Path(dataset.path).read_text()) == dataset.metadata
    assert dataset.metadata["uri"] == uris[0] and dataset.metadata["num_rows"] == 5
    assert dataset.metadata["sha256"] == sha256_file(tmp_path / "ds" / "manifest.json")
    assert metrics.logged["pairs"] == 5 and metrics.logged["pairs.bloody"] == 2
    assert metrics.logged["generation.violating_candidates"] == 5
    assert len(load_preference_dataset(out, cache_dir=tmp_path / "cache")) == 5
    with pytest.raises(DataError, match="shard tasks wrote to"):
        merge_data_shards.python_func(dataset_uri=str(tmp_path / "elsewhere"), shard_count=2, metrics=metrics,
                                      dataset=dataset, shard_uris=uris)


@pytest.mark.slow
def test_parallel_for_fan_out_under_kfp_local(tmp_path):
    from kfp import dsl, local

    from components.generate_data import generate_data_shard, merge_data_shards

    @dsl.pipeline
    def fan_out(dataset_uri: str, overrides: list):
        with dsl.ParallelFor(items=[0, 1, 2]) as index:
            shard = generate_data_shard(dataset_uri=dataset_uri, shard_index=index, shard_count=3, preset="tiny",
                                        config_overrides=overrides, device="cpu")
        merge_data_shards(dataset_uri=dataset_uri, shard_count=3, shard_uris=dsl.Collected(shard.output))

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    fan_out(dataset_uri=str(tmp_path / "ds"), overrides=OVERRIDES)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["num_rows"] == 5 and len(manifest["shards"]) == 3
