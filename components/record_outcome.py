"""The pipeline's exit handler: records what the run amounted to, whatever happened.

It runs after the body of the `dsl.ExitHandler` succeeds, fails or is canceled, reads KFP's final status and the run
records the other steps left in the object store, and writes `pipeline-runs/<run id>/outcome.json` with one of
registered | skipped | rejected | failed | canceled. A skipped run (principles unchanged) is a success, not a failure.
"""

from kfp import dsl

from components._image import LIVO_IMAGE


@dsl.component(base_image=LIVO_IMAGE, install_kfp_package=False)
def record_outcome(status: dsl.PipelineTaskFinalStatus, run_id: str, run_name: str, schedule_cron: str) -> str:
    """Write the run's outcome record; returns its URI (`livo run` reads the outcome from there)."""
    from livo.log import get_logger, log_event
    from livo.orchestration import build_outcome, write_outcome
    from livo.store import ObjectStore

    store = ObjectStore.from_env()
    outcome = build_outcome(store, run_id=run_id, run_name=run_name, final_state=status.state,
                            error_message=status.error_message or "", schedule_cron=schedule_cron)
    key = write_outcome(store, outcome)
    log_event(get_logger("livo.components.record_outcome"), "run_outcome", status=outcome["status"],
              summary=outcome["summary"], record=store.uri(key))
    return store.uri(key)
