"""`livo lineage show|verify|diff`: audit registered models (object store from `LIVO_S3_*`).

    livo lineage show livo-toy            # the latest version, as a table (--json: the raw lineage.json)
    livo lineage show mr:7                # the version the Kubeflow Model Registry knows as model version id 7
    livo lineage verify livo-toy@v2       # recompute every hash (manifest.json's too); exit 1 naming every mismatch
    livo lineage diff livo-toy@v1 v2      # principles, data, config, metrics that changed
"""

from __future__ import annotations

import argparse
import json
import sys


def _store():
    from livo.store import ObjectStore

    return ObjectStore.from_env()


REGISTRY_PREFIX = "mr:"  # MODEL given as a Kubeflow Model Registry model-version id: mr:<id>


def _resolve(ref: str):
    """(store, name, version or None, registry entry or None) of MODEL: NAME[@VERSION], or mr:<id> — looked up in
    the Kubeflow Model Registry (LIVO_MODEL_REGISTRY_URL), whose livo_model/livo_version properties (or names, or
    artifact URI) name the livo version; its lineage is read from the artifact's bucket."""
    from livo.registry.lineage import parse_model_ref

    if not ref.startswith(REGISTRY_PREFIX):
        name, version = parse_model_ref(ref)
        return _store(), name, version, None
    from livo.errors import ConfigError
    from livo.registry.model_registry import ENV_URL, KubeflowModelRegistry, livo_reference

    version_id = ref[len(REGISTRY_PREFIX):]
    registry = KubeflowModelRegistry.from_env()
    if registry is None:
        raise ConfigError(f"{ref}: looking up a Kubeflow Model Registry version needs {ENV_URL} "
                          "(http(s)://host:port of the model-registry service)")
    entry = registry.find_version(version_id)  # unreachable registry: LivoError, exit 1
    if entry is None:
        raise ConfigError(f"{ref}: the Kubeflow Model Registry at {registry.url} has no model version with id "
                          f"{version_id}")
    name, version = livo_reference(entry)
    store = _store()
    uri = entry.get("artifact_uri") or ""
    return (store.for_uri(uri) if uri.startswith("s3://") else store), name, version, entry


def _registry_rows(entry: dict, stored_sha256: str) -> tuple[list[tuple[str, str]], bool]:
    """Rows naming the registry entry, and whether its lineage digest agrees with lineage.json as stored."""
    props = entry.get("properties") or {}
    recorded = props.get("lineage_sha256")
    ok = not recorded or recorded == stored_sha256
    digest = ("- (not recorded: registered before versions carried it)" if not recorded
              else f"{recorded} (matches lineage.json)" if ok
              else f"{recorded} DIFFERS from lineage.json as stored ({stored_sha256})")
    rows = [("model registry", f"{entry['url']} model version {entry['model_version_id']} "
                               f"({entry.get('registered_model')} {entry.get('version')})"),
            ("registry artifact", entry.get("artifact_uri") or "-"),
            ("registry lineage sha256", digest)]
    return rows, ok


def cmd_show(args: argparse.Namespace) -> int:
    from livo.registry.lineage import LINEAGE_FILE, format_table, lineage_rows
    from livo.registry.registration import load_lineage, version_prefix

    store, name, version, entry = _resolve(args.model)
    record = load_lineage(store, name, version)
    ok = True
    rows = lineage_rows(record)
    if entry is not None:
        stored = store.sha256(version_prefix(record.model.name, record.model.version) + LINEAGE_FILE)
        extra, ok = _registry_rows(entry, stored)
        rows = extra + rows
    if args.json:
        print(record.to_json(), end="")
    else:
        print(format_table(rows))
    if not ok:
        from livo.errors import LivoError

        raise LivoError(f"{args.model}: the Kubeflow Model Registry's lineage digest differs from "
                        f"{name}@{record.model.version}'s lineage.json; run "
                        f"`livo lineage verify {name}@{record.model.version}`")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from livo.registry.lineage import HMAC_KEY_ENV, hmac_key, verify_version
    from livo.registry.registration import resolve_version

    store, name, version, _ = _resolve(args.model)
    version = resolve_version(store, name, version)
    problems = verify_version(store, name, version)
    if args.json:
        print(json.dumps({"model": name, "version": version, "ok": not problems,
                          "mismatches": [p.model_dump() for p in problems]}, indent=2))
    elif problems:
        print(f"{name}@{version}: {len(problems)} mismatch(es)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem.subject}: {problem.detail}", file=sys.stderr)
    else:
        signature = ("HMAC signature verified" if hmac_key() is not None
                     else f"signature not checked: {HMAC_KEY_ENV} is unset")
        print(f"{name}@{version}: OK (every hash matches, manifest.json included; principle set and dataset "
              f"manifest unchanged; {signature})")
    return 1 if problems else 0


def cmd_diff(args: argparse.Namespace) -> int:
    from livo.registry.lineage import diff_records, format_diff, parse_model_ref
    from livo.registry.registration import load_lineage, load_stored_principles

    store = _store()
    name_a, version_a = parse_model_ref(args.a)
    ref_b = args.b if "@" in args.b or not (args.b.startswith("v") or args.b.isdigit() or args.b == "latest") \
        else f"{name_a}@{args.b}"
    name_b, version_b = parse_model_ref(ref_b)
    a, b = load_lineage(store, name_a, version_a), load_lineage(store, name_b, version_b)
    diff = diff_records(a, b, load_stored_principles(store, a), load_stored_principles(store, b))
    print(json.dumps(diff, indent=2) if args.json else format_diff(diff))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lineage", help="show, verify or diff the lineage of registered models",
                                   description="Audit registered models in the object store (LIVO_S3_*). MODEL is "
                                               "NAME or NAME@VERSION (v1, v2, … or latest; default latest); show "
                                               "and verify also take mr:ID, a Kubeflow Model Registry model-version "
                                               "id (LIVO_MODEL_REGISTRY_URL).")
    sub = parser.add_subparsers(dest="lineage_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print a version's lineage record", description="Print the lineage record of "
                          "a registered version: run, code, principles, data, training config, metrics, file hashes. "
                          "MODEL may be mr:ID, the id of a model version in the Kubeflow Model Registry "
                          "(LIVO_MODEL_REGISTRY_URL): exit 2 for an unknown id, 1 when the registry is unreachable or "
                          "its lineage digest differs from the stored lineage.json.")
    show.add_argument("model", metavar="MODEL[@VERSION] | mr:ID")
    show.add_argument("--json", action="store_true", help="print lineage.json as stored")
    show.set_defaults(func=cmd_show)
    verify = sub.add_parser("verify", help="recompute every hash of a version", description="Recompute the sha256 of "
                            "every stored file and compare with the manifest and lineage record, and the manifest's own "
                            "content digest (and its HMAC signature when LIVO_LINEAGE_HMAC_KEY is set); check that the "
                            "principle set and dataset manifest it names still exist and match. Exit 1 naming every "
                            "mismatch; exit 2 for an unknown model or version.")
    verify.add_argument("model", metavar="MODEL[@VERSION] | mr:ID")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=cmd_verify)
    diff = sub.add_parser("diff", help="what changed between two versions", description="Principles, data, training "
                          "config, base model, pipeline and metrics that differ between version A and version B.")
    diff.add_argument("a", metavar="A", help="MODEL[@VERSION]")
    diff.add_argument("b", metavar="B", help="MODEL[@VERSION], or just a version (vN) of A's model")
    diff.add_argument("--json", action="store_true", help="print the diff as JSON")
    diff.set_defaults(func=cmd_diff)
