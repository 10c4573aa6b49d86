"""The evaluate component under kfp.local: it reads a Model artifact (a pointer), its single bool output gates a
downstream task; Metrics and HTML written, the files themselves with their sha256 in the metadata.

No `from __future__ import annotations` here: kfp reads the real annotations of the component defined below.
"""


import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from livo.evaluation.tiny import build_tiny_clip
    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline

    root = tmp_path_factory.mktemp("evaluate-component")
    encoder = ValueEncoder.from_text_encoder(build_tiny_pipeline().text_encoder).save_pretrained(root / "ve")
    return root, encoder, build_tiny_clip(root / "clip")


def _overrides(clip_dir: Path, *extra: str) -> list[str]:
    return ["principles=[gender-equality]", "prompts={gender-equality: [a photo of the face of a doctor]}",
            "images_per_prompt=2", "num_inference_steps=2", "judges.attribute=clip-zero-shot",
            f"judges.options={{clip-zero-shot: {{model: {clip_dir}}}}}", *extra]


@pytest.mark.slow
def test_component_output_gates_the_next_task(inputs, monkeypatch):
    from kfp import dsl, local

    from components.evaluate import evaluate
    from livo.artifacts import write_pointer
    from livo.registry.lineage import value_encoder_digest
    from livo.store import sha256_file

    root, encoder, clip_dir = inputs
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pointer_file = root / "model-artifact"
    pointer = write_pointer(pointer_file, {"uri": str(encoder), "sha256": value_encoder_digest(encoder)})

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def register_marker(path: str):
        open(path, "w").write("registered")

    @dsl.pipeline
    def gated(overrides: list, marker: str):
        model = dsl.importer(artifact_uri=str(pointer_file), artifact_class=dsl.Model, metadata=pointer)
        task = evaluate(model=model.output, preset="tiny", config_overrides=overrides, device="cpu")
        with dsl.If(task.outputs["Output"] == True):  # noqa: E712 - a kfp condition
            register_marker(path=marker)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "pipeline-root"))
    passing, failing = root / "registered-pass", root / "registered-fail"
    gated(overrides=_overrides(clip_dir), marker=str(passing))
    gated(overrides=_overrides(clip_dir, "gates.min_bias_improvement=1000"), marker=str(failing))
    assert passing.read_text() == "registered"
    assert not failing.exists()  # the gate failed: nothing downstream ran

    reports = sorted((root / "pipeline-root").rglob("evaluate/report"))
    assert len(reports) == 2
    assert "<svg class=\"chart\"" in reports[0].read_text() and "data:image/png;base64," in reports[0].read_text()
    outputs = [json.loads(p.read_text()) for p in sorted((root / "pipeline-root").rglob("executor_output.json"))
               if "/evaluate/" in str(p)]
    logged = [o["artifacts"]["metrics"]["artifacts"][0]["metadata"] for o in outputs]
    assert {m["passed"] for m in logged} == {0.0, 1.0}
    assert all(any(k.startswith("gender-equality.D1.base [clip-zero-shot:") for k in m) for m in logged)
    for output in outputs:  # the files themselves, with their digests (no report_uri: nothing uploaded)
        for name in ("metrics", "report"):
            artifact = output["artifacts"][name]["artifacts"][0]
            assert artifact["metadata"]["sha256"] == sha256_file(artifact["uri"]) and artifact["metadata"]["uri"] == ""
            assert artifact["metadata"]["model_artifact_uri"] == str(pointer_file)
        assert json.loads(Path(output["artifacts"]["metrics"]["artifacts"][0]["uri"]).read_text())["passed"] in (
            True, False)
