"""``mnedge models install|list|use|rollback``: manage the installed model artifacts.

The store (see :mod:`mnedge_live.model_store`) is ``$MNEDGE_HOME``, else
``~/.local/share/mnedge``, or the folder given with ``--store``.  The model in
use there is what ``mnedge live``, ``mnedge predict`` and ``mnedge-train
evaluate`` load when no ``--model`` is given; without one in use, the model
embedded in the package is loaded.

Exit status: 0 on success; 1 when the store refuses (duplicate id, unknown id,
nothing to roll back to, a ``state.json`` naming something that is no model
id); 2 for an artifact that fails verification (tampered, partial, unknown
schema) or a store that cannot be read or written (its path a file, not a folder, included).  ``list`` prints the
listing and exits 2 when the model in use cannot be loaded (its folder is
missing or fails verification: what ``mnedge live`` and ``mnedge predict``
would refuse to start with), with a warning on stderr; the JSON then names the
problem under ``"problem"``.
"""

from __future__ import annotations

import argparse
import json
import sys

from mnedge_live.artifact import ArtifactError, default_artifact_path, load_artifact
from mnedge_live.model_store import ModelStore, StoreError, StoreUnusableError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``mnedge models`` and its actions."""
    p = subparsers.add_parser("models", help="install, list, switch and roll back model artifacts",
                              description="Manage installed model artifacts: the one in use is loaded "
                                          "when no --model is given.")
    p.add_argument("--store", metavar="DIR", help="model store folder (default: $MNEDGE_HOME or ~/.local/share/mnedge)")
    actions = p.add_subparsers(dest="action", required=True)
    s = actions.add_parser("install", help="verify an artifact and copy it into the store under its model id")
    s.add_argument("path", metavar="PATH", help="model artifact directory (from 'mnedge-train export')")
    s.add_argument("--force", action="store_true", help="replace an installed model with the same id")
    s.add_argument("--use", action="store_true", help="also make it the model in use")
    s = actions.add_parser("list", help="installed models, the one in use marked, and the embedded default")
    s.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    s = actions.add_parser("use", help="make an installed model the one in use")
    s.add_argument("model_id", metavar="ID")
    actions.add_parser("rollback", help="go back to the previously used model")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Do the chosen action; returns the exit status."""
    store = ModelStore(args.store)
    try:
        if args.action == "install":
            art = store.install(args.path, force=args.force, use=args.use)
            print(f"installed {art.model_id} in {art.path}" + (" (now in use)" if args.use else ""))
        elif args.action == "use":
            store.use(args.model_id)
            print(f"in use: {args.model_id}")
        elif args.action == "rollback":
            state = store.rollback()
            print(f"rolled back; in use: {state.in_use or 'none (the embedded default model)'}")
        else:
            return _list(store, args.json)
    except ArtifactError as exc:
        print(f"mnedge models {args.action}: refused, the artifact fails verification: {exc}", file=sys.stderr)
        return 2
    except StoreUnusableError as exc:
        print(f"mnedge models {args.action}: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"mnedge models {args.action}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mnedge models {args.action}: cannot use the store {store.root}: {exc}", file=sys.stderr)
        return 2
    return 0


def listing(store: ModelStore) -> dict:
    """What ``list --json`` prints: the store, each installed model (verified), the embedded default."""
    models = []
    with store.reading():  # an install meanwhile is seen whole or not at all
        state = store.state()
        for model_id in store.installed():
            path = store.model_path(model_id)
            row = {"model_id": model_id, "path": str(path), "in_use": model_id == state.in_use,
                   "created": None, "status": "ok"}
            try:
                row["created"] = load_artifact(path).card.get("created")
            except ArtifactError as exc:
                row["status"] = f"fails verification: {exc}"
            models.append(row)
        problem = None
        if state.in_use is not None:
            if state.in_use not in store.installed():
                models.append({"model_id": state.in_use, "path": str(store.model_path(state.in_use)), "in_use": True,
                               "created": None, "status": "MISSING: not installed in the store"})
                models.sort(key=lambda m: m["model_id"])
                problem = f"the model in use, {state.in_use}, is not installed in {store.root}"
            else:
                status = next(m["status"] for m in models if m["model_id"] == state.in_use)
                if status != "ok":
                    problem = f"the model in use, {state.in_use}, {status}"
    embedded = {"path": str(default_artifact_path()), "model_id": None, "status": "absent"}
    if default_artifact_path().is_dir():
        try:
            embedded["model_id"] = load_artifact(default_artifact_path()).model_id
            embedded["status"] = "ok"
        except ArtifactError as exc:
            embedded["status"] = f"fails verification: {exc}"
    return {"store": str(store.root), "in_use": state.in_use, "history": state.history,
            "models": models, "embedded": embedded,
            "default": "store" if state.in_use else "embedded", "problem": problem}


def _list(store: ModelStore, as_json: bool) -> int:
    info = listing(store)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        _print_table(info)
    if info["problem"]:
        print(f"mnedge models list: WARNING: {info['problem']}: mnedge live, predict and evaluate refuse to start "
              "without --model; choose a model with 'mnedge models use ID', go back with 'mnedge models rollback' "
              "or reinstall it with 'mnedge models install --force PATH'", file=sys.stderr)
        return 2
    return 0


def _print_table(info: dict) -> None:
    lines = [f"model store {info['store']}", f"  {'':1} {'model id':<40} {'created':<26} status"]
    for m in info["models"]:
        mark = "*" if m["in_use"] else " "
        lines.append(f"  {mark} {m['model_id']:<40} {m['created'] or '-':<26} {m['status']}")
    if not info["models"]:
        lines.append("  (no models installed)")
    emb = info["embedded"]
    used = " (used: no model in use in the store)" if info["default"] == "embedded" else ""
    lines.append(f"embedded default: {emb['model_id'] or '-'} [{emb['status']}] {emb['path']}{used}")
    if info["history"]:
        lines.append(f"rollback goes to: {info['history'][-1] or 'none in use (the embedded default)'}")
    print("\n".join(lines))
