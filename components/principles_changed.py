"""Has the principle set changed since the latest registered version of the model?

Single `bool` output: the pipeline gates all further work on it with `dsl.If` (a NamedTuple output would be silently
skipped by kfp.local, see ENVIRONMENT.md). `False` makes the run a cheap no-op that the exit handler reports as
`skipped`, which is what a scheduled retraining run does until someone edits the principles.
"""

from kfp import dsl

from components._image import LIVO_IMAGE


@dsl.component(base_image=LIVO_IMAGE, install_kfp_package=False)
def principles_changed(model_name: str, principle_set_hash: str, force_retrain: bool, run_id: str) -> bool:
    """True when `model_name` has no registered version for `principle_set_hash` (or `force_retrain` is set)."""
    from livo.log import get_logger, log_event
    from livo.orchestration import record_decision
    from livo.registry.registration import latest_version
    from livo.registry.registration import principles_changed as registry_principles_changed
    from livo.store import ObjectStore

    store = ObjectStore.from_env()
    changed = bool(registry_principles_changed(store, model_name, principle_set_hash))
    record_decision(store, run_id, changed=changed or force_retrain, forced=force_retrain and not changed,
                    principle_set_hash=principle_set_hash, model_name=model_name,
                    latest_version=latest_version(store, model_name))
    log_event(get_logger("livo.components.principles_changed"), "principles_checked", model_name=model_name,
              principle_set_hash=principle_set_hash, changed=changed, force_retrain=force_retrain)
    return changed or force_retrain
