"""kfp.local (2.17) runs `dsl.OneOf` over parameters but not over artifacts: a DAG output selecting one of several
artifacts fails with "Expected 1 artifact in ArtifactSelectorSpec. Got: 2". The KFP backend resolves it (the
selected branch's artifact). The pipeline joins the `pod` and `trainjob` training branches' `Model` with `dsl.OneOf`,
so `livo run` needs the same resolution locally: `allow_artifact_oneof()` teaches kfp.local to take the artifact of
the one branch that ran, as it already does for parameters. It changes nothing where kfp.local handles it itself
(one selector) and fails, as kfp.local does for parameters, when no branch or several branches produced one.
"""

from __future__ import annotations

from typing import Any


def allow_artifact_oneof() -> bool:
    """Install the resolution into kfp.local (idempotent); returns whether it is installed."""
    try:
        from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils
    except ImportError:  # another kfp layout: nothing to teach
        return False
    original = OrchestratorUtils.__dict__["get_dag_output_artifacts"].__func__
    if getattr(original, "_livo_artifact_oneof", False):
        return True

    def get_dag_output_artifacts(cls: Any, dag_outputs_spec: Any, io_store: Any) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        for key, selector_spec in dag_outputs_spec.artifacts.items():
            found = []
            for selector in selector_spec.artifact_selectors:
                try:
                    found.append(io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key))
                except (KeyError, ValueError):  # that branch did not run
                    continue
            if len(found) != 1:
                raise ValueError(f"{len(found)} values available for the 'dsl.OneOf' output '{key}'; expected "
                                 "exactly one (the artifact of the branch that ran)")
            outputs[key] = found[0]
        return outputs

    get_dag_output_artifacts._livo_artifact_oneof = True  # type: ignore[attr-defined]
    OrchestratorUtils.get_dag_output_artifacts = classmethod(get_dag_output_artifacts)
    return True
