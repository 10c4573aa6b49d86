"""pipelines/kfp_local_compat.py: kfp.local resolves a `dsl.OneOf` over artifacts (the training branches' Model) to
the artifact of the branch that ran, as the KFP backend does.

No `from __future__ import annotations` here: kfp reads the real annotations of the components below.
"""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def test_artifact_oneof_runs_locally_and_passes_the_branch_that_ran(tmp_path):
    from kfp import dsl, local
    from kfp.dsl import Input, Model, Output

    from pipelines.kfp_local_compat import allow_artifact_oneof

    assert allow_artifact_oneof() and allow_artifact_oneof()  # idempotent

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def train(model: Output[Model], tag: str):
        model.metadata["tag"] = tag
        open(model.path, "w").write(tag)

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def consume(model: Input[Model], out: str):
        import json

        json.dump({"uri": model.uri, "tag": model.metadata["tag"], "text": open(model.path).read()}, open(out, "w"))

    @dsl.pipeline
    def branches(launcher: str, out: str):
        with dsl.If(launcher == "pod"):
            pod = train(tag="pod")
        with dsl.Else():
            trainjob = train(tag="trainjob")
        consume(model=dsl.OneOf(pod.outputs["model"], trainjob.outputs["model"]), out=out)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    for launcher in ("pod", "trainjob"):
        out = tmp_path / f"{launcher}.json"
        branches(launcher=launcher, out=str(out))
        consumed = json.loads(out.read_text())
        assert consumed["tag"] == consumed["text"] == launcher
        models = [json.loads(p.read_text()).get("artifacts", {}).get("model", {"artifacts": [{}]})["artifacts"][0]
                  for p in (tmp_path / "root").rglob("executor_output.json")]
        (produced,) = [m for m in models if m.get("metadata", {}).get("tag") == launcher]
        assert consumed["uri"] == produced["uri"]
