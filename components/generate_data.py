"""Preference-data generation as KFP components: one task per shard (fanned out with ParallelFor), then a merge.

Thin wrappers over `livo.data.generate` (docs/data.md). Every shard task plans the same generation from the same
inputs, generates only its shard (skipped when already committed, so a retried or re-run pipeline resumes), and
writes the shard's parquet and commit object. The merge task checks every shard's commit and hash and writes
`manifest.json` last; its `Dataset` artifact (a pointer: the dataset's URI and its manifest's sha256, the digest
lineage records; livo.artifacts) is what the training step consumes, and its string output is the dataset URI.

Usage in a pipeline:

    with dsl.ParallelFor(items=list(range(n))) as index:
        shard = generate_data_shard(dataset_uri=uri, shard_index=index, shard_count=n, preset=preset)
    merge_data_shards(dataset_uri=uri, shard_count=n, shard_uris=dsl.Collected(shard.output))
"""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components._image import LIVO_IMAGE


@dsl.component(base_image=LIVO_IMAGE, install_kfp_package=False)
def generate_data_shard(
    dataset_uri: str,
    shard_index: int,
    shard_count: int,
    preset: str = "tiny",
    principles_uri: str = "",
    model_source: str = "",
    config_overrides: list = [],  # noqa: B006 - kfp parameters take literal defaults
    device: str = "auto",
) -> str:
    """Generate shard `shard_index` of `shard_count` into `dataset_uri` (s3://bucket/prefix or a directory)."""
    from livo.data.generate import build_generate_config, prepare_generation, run_generation
    from livo.orchestration import use_parallel_task_threads

    use_parallel_task_threads()  # under `livo run` the shards share the cores; a pod has its own
    overrides = [str(item) for item in config_overrides]
    overrides += [f"num_shards={int(shard_count)}", f"device={device}"]
    if principles_uri:
        overrides.append(f"principles_file={principles_uri}")
    if model_source:
        overrides.append(f"model={model_source}")
    config = build_generate_config(overrides=overrides, preset=preset)
    plan = prepare_generation(config, out=dataset_uri or None)
    summary = run_generation(plan, shard_indices=[int(shard_index)], merge=False, progress=False)
    print(summary.as_dict())
    return plan.location.uri


@dsl.component(base_image=LIVO_IMAGE, install_kfp_package=False)
def merge_data_shards(
    dataset_uri: str,
    shard_count: int,
    metrics: Output[Metrics],
    dataset: Output[Dataset],
    shard_uris: list = [],  # noqa: B006 - the shard tasks' outputs (dsl.Collected): makes this task wait for them
) -> str:
    """Check every shard's commit and sha256, write `manifest.json` last, log the counts and write the `Dataset`
    pointer; returns the URI.

    An empty `dataset_uri` means: where the shard tasks wrote (their default location, the same for all).
    """
    from livo.artifacts import dataset_pointer, write_pointer
    from livo.data.generate import merge_generated_dataset
    from livo.errors import DataError

    written = sorted({str(uri).rstrip("/") for uri in shard_uris})
    if not dataset_uri:
        if len(written) != 1:
            raise DataError(f"cannot tell where the shards are: dataset_uri is empty and the shard tasks wrote to "
                            f"{written or 'nothing'}; pass dataset_uri")
        dataset_uri = written[0]
    elif written and written != [dataset_uri.rstrip("/")]:
        raise DataError(f"shard tasks wrote to {written}, not {dataset_uri}; pass the same dataset_uri to every task")
    manifest = merge_generated_dataset(dataset_uri, int(shard_count))
    dataset.metadata.update(write_pointer(dataset.path, dataset_pointer(dataset_uri, manifest)))
    metrics.log_metric("pairs", manifest["num_rows"])
    for principle_id, count in manifest["counts"]["by_principle"].items():
        metrics.log_metric(f"pairs.{principle_id}", count)
    for name, value in manifest["stats"].items():
        metrics.log_metric(f"generation.{name}", value)
    print(f"dataset {dataset_uri}: {manifest['num_rows']} pairs, {manifest['counts']['by_principle']}")
    return dataset_uri
