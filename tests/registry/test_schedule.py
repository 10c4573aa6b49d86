"""`livo schedule` / schedule_retraining against an in-process fake KFP API server (kfp_server_api requests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_kfp_api import FakeKfpApi

from livo.cli import main
from livo.errors import ConfigError, LivoError
from livo.registry.schedule import kfp_api_client, schedule_retraining

PARAMS = {"run_principles_uri": "s3://mlpipeline/livo/principles.yaml", "run_schedule_cron": "0 0 3 * * *"}
PUSHED_IMAGE = "registry.example.org/team/livo:1.0@sha256:" + "e" * 64


def test_recurring_run_targets_latest_pipeline_version() -> None:
    with FakeKfpApi(required_token="tok") as kfp:
        pipeline_id = kfp.add_pipeline("livo-full")
        result = schedule_retraining(kfp_api_client(kfp.url, "tok"), cron=" 0 0 3 * * * ", parameters=PARAMS,
                                     display_name="livo-retrain-livo-sd15")
        [run] = kfp.recurring_runs.values()
        assert run["pipeline_version_reference"] == {"pipeline_id": pipeline_id}  # no version id: the latest
        assert run["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
        assert run["runtime_config"] == {"parameters": PARAMS}
        assert (run["mode"], run["max_concurrency"], run["no_catchup"]) == ("ENABLE", "1", True)
        [experiment] = kfp.experiments.values()
        assert experiment["display_name"] == "livo" and run["experiment_id"] == experiment["experiment_id"]
        assert (result.recurring_run_id, result.pipeline_id, result.pipeline_uploaded) == (
            run["recurring_run_id"], pipeline_id, False)

        # The same name again is refused; --replace swaps it and reuses the experiment.
        with pytest.raises(ConfigError, match="recurring run 'livo-retrain-livo-sd15' already exists .*--replace"):
            schedule_retraining(kfp_api_client(kfp.url, "tok"), cron="@every 24h", parameters=PARAMS,
                                display_name="livo-retrain-livo-sd15")
        replaced = schedule_retraining(kfp_api_client(kfp.url, "tok"), cron="@every 24h", parameters=PARAMS,
                                       display_name="livo-retrain-livo-sd15", replace=True)
        assert replaced.replaced == result.recurring_run_id
        assert [r["trigger"]["cron_schedule"]["cron"] for r in kfp.recurring_runs.values()] == ["@every 24h"]
        assert len(kfp.experiments) == 1


def test_missing_pipeline_is_uploaded_from_package_or_refused(tmp_path: Path) -> None:
    package = tmp_path / "livo_full.yaml"
    package.write_text("pipelineInfo: {name: livo-full}\n")
    with FakeKfpApi() as kfp:
        with pytest.raises(ConfigError, match="pipeline 'livo-full' does not exist .*--package"):
            schedule_retraining(kfp_api_client(kfp.url), cron="@daily", parameters=PARAMS, display_name="r")
        assert kfp.recurring_runs == {}
        result = schedule_retraining(kfp_api_client(kfp.url), cron="@daily", parameters=PARAMS, display_name="r",
                                     package=package)
        assert result.pipeline_uploaded and b"pipelineInfo: {name: livo-full}" in kfp.uploads[0]
        assert next(iter(kfp.recurring_runs.values()))["pipeline_version_reference"]["pipeline_id"] == \
            result.pipeline_id


def test_errors_are_one_line_causes() -> None:
    with FakeKfpApi(required_token="right") as kfp:
        kfp.add_pipeline("livo-full")
        with pytest.raises(LivoError, match="refused to look up pipeline 'livo-full': HTTP 401 .*check KFP_TOKEN"):
            schedule_retraining(kfp_api_client(kfp.url, "wrong"), cron="@daily", parameters=PARAMS, display_name="r")
        with pytest.raises(ConfigError, match="has 5 fields"):
            schedule_retraining(kfp_api_client(kfp.url, "right"), cron="0 3 * * *", parameters=PARAMS,
                                display_name="r")
        assert kfp.recurring_runs == {}
    with pytest.raises(LivoError, match="unreachable"):
        schedule_retraining(kfp_api_client(kfp.url), cron="@daily", parameters=PARAMS, display_name="r")
    with pytest.raises(ConfigError, match="expected http"):
        kfp_api_client("kfp.example.org")


def test_schedule_command_validates_parameters_against_the_package(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    package = Path("pipelines/livo_full.yaml")
    if not package.is_file():
        pytest.skip("the compiled pipeline package is not in this checkout")
    with FakeKfpApi() as kfp:
        kfp.add_pipeline("livo-full")
        code = main(["schedule", "--host", kfp.url, "--cron", "0 0 3 * * *", "--principles",
                     "s3://mlpipeline/livo/p.yaml", "--model-name", "livo-prod", "-p", "data_shard_count=16",
                     "--image", PUSHED_IMAGE])
        assert code == 0, capsys.readouterr().err
        [run] = kfp.recurring_runs.values()
        assert run["display_name"] == "livo-retrain-livo-prod"
        assert run["runtime_config"]["parameters"] == {
            "run_principles_uri": "s3://mlpipeline/livo/p.yaml", "run_schedule_cron": "0 0 3 * * *",
            "registry_model_name": "livo-prod", "data_shard_count": 16}
        assert "scheduled 'livo-retrain-livo-prod' (0 0 3 * * *)" in capsys.readouterr().out
        assert main(["schedule", "--host", kfp.url, "--cron", "0 0 3 * * *", "--principles", "x.yaml",
                     "-p", "no_such_param=1", "--image", PUSHED_IMAGE]) == 2
        assert "unknown pipeline parameter(s) no_such_param" in capsys.readouterr().err
        assert len(kfp.recurring_runs) == 1


def _uploaded_images(upload: bytes) -> set[str]:
    """The executor images of an uploaded package (multipart body)."""
    import re

    return {m.decode() for m in re.findall(rb"\n +image: (\S+@sha256:[0-9a-f]{64})", upload)}


def test_schedule_uploads_the_image_it_was_given(capsys: pytest.CaptureFixture[str]) -> None:
    """`livo schedule --image X`: the package the recurring run will run holds X on every task, whether the server
    lacked the pipeline (uploaded) or had an older version (a new latest version); the same package twice uploads
    nothing new."""
    args = ["--cron", "0 0 3 * * *", "--principles", "s3://mlpipeline/livo/p.yaml", "--image", PUSHED_IMAGE]
    with FakeKfpApi() as kfp:
        assert main(["schedule", "--host", kfp.url, *args]) == 0, capsys.readouterr().err
        assert f"in image {PUSHED_IMAGE} (pipeline uploaded)" in capsys.readouterr().out
        assert _uploaded_images(kfp.uploads[0]) == {PUSHED_IMAGE}

    other = PUSHED_IMAGE.replace("e" * 64, "a" * 64)
    with FakeKfpApi() as kfp:
        pipeline_id = kfp.add_pipeline("livo-full")  # an older version is already there
        assert main(["schedule", "--host", kfp.url, *args[:-1], other, "--replace"]) == 0, capsys.readouterr().err
        assert kfp.uploads == [] and len(kfp.version_uploads) == 1
        assert _uploaded_images(kfp.version_uploads[0]) == {other}
        latest = kfp.versions[pipeline_id][-1]
        assert latest["name"].startswith("livo-full-") and len(latest["name"]) == len("livo-full-") + 12
        assert f"(version {latest['name']} uploaded)" in capsys.readouterr().out
        assert main(["schedule", "--host", kfp.url, *args[:-1], other, "--replace"]) == 0
        assert len(kfp.version_uploads) == 1  # already the latest version: nothing uploaded
        [run] = kfp.recurring_runs.values()
        assert run["pipeline_version_reference"] == {"pipeline_id": pipeline_id}


def test_schedule_refuses_an_unpublished_or_unpinned_image(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeKfpApi() as kfp:
        kfp.add_pipeline("livo-full")
        base = ["schedule", "--host", kfp.url, "--cron", "@daily", "--principles", "s3://b/p.yaml"]
        assert main(base) == 2  # the committed default is the unpublished marker
        assert "is not a published digest" in capsys.readouterr().err
        assert main([*base, "--image", "registry.example.org/livo:1.0"]) == 2
        assert "is not pinned by digest" in capsys.readouterr().err
        assert kfp.recurring_runs == {} and kfp.version_uploads == []


def test_schedule_retargets_a_given_package_to_the_image(tmp_path: Path, capsys) -> None:
    package = Path("pipelines/livo_full.yaml")
    with FakeKfpApi() as kfp:
        assert main(["schedule", "--host", kfp.url, "--cron", "@daily", "--principles", "s3://b/p.yaml",
                     "--package", str(package), "--image", PUSHED_IMAGE]) == 0, capsys.readouterr().err
        assert _uploaded_images(kfp.uploads[0]) == {PUSHED_IMAGE}
        assert "0" * 64 not in kfp.uploads[0].decode()
