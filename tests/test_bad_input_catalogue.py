"""The bad-input catalogue: every way a user (or a hostile one) has fed farmhand something wrong.
Each case asserts the exit code, one `farmhand: error:` line that names the file, value or
holder, no traceback, and that nothing in the farmhand home or the project changed. Cases that
need a read-only or full disk mount a tmpfs inside a private mount namespace (gone with the
process), and are skipped with the reason where that is refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from conftest import REPO, free_port

from supervisor.lock import HomeLock

CASES: list[Case] = []
RAN: list[str] = []  # cases that passed every check
SKIPPED: list[str] = []  # cases this machine cannot run (said by pytest with the reason)


@dataclass
class Case:
    name: str
    args: list[str]
    code: int
    says: list[str]
    setup: Callable | None = None  # (farmhand, tmp_path) -> extra env, or None
    mount: str | None = None  # "ro-project" | "ro-home" | "full-home"
    uid: int | None = None  # run as this uid (no passwd entry), with the system python
    env_drop: tuple[str, ...] = ()
    fixtures: tuple[str, ...] = field(default=())


def case(*args, **kw):
    CASES.append(Case(*args, **kw))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def overrides(text: str):
    def setup(fh, tmp):
        write(tmp / "o.yaml", text)
    return setup


def llamafarm_yaml(text: str):
    def setup(fh, tmp):
        write(fh.project / "llamafarm.yaml", text)
    return setup


def profiles_dir(edit: Callable[[str], str]):
    def setup(fh, tmp):
        target = tmp / "profiles"
        shutil.copytree(REPO / "profiles", target, ignore=shutil.ignore_patterns("examples"))
        write(target / "cpu-small.yaml", edit((target / "cpu-small.yaml").read_text()))
    return setup


OV = ["--overrides", "{tmp}/o.yaml"]
PLAN = ["plan", "--profile", "cpu-small"]
APPLY = ["apply", "--yes", "--profile", "cpu-small"]

# --- YAML and schema ---------------------------------------------------------------------------
case("malformed profile YAML", ["plan", "--profiles-dir", "{tmp}/profiles"], 2,
     ["{tmp}/profiles/cpu-small.yaml:5", "malformed YAML", "(a flow mapping opened on line 4)"],
     setup=profiles_dir(lambda t: t.replace("match: {}", "match: {oops")))
case("duplicate key", [*PLAN, *OV], 2,
     ["{tmp}/o.yaml:4", "duplicate key 'llama-server' (also on line 3"],
     setup=overrides("deployment:\n  runtimes:\n    llama-server: {port: 12000}\n    llama-server: {port: 12001}\n"))
case("grace_s: .inf", [*PLAN, *OV], 2, ["{tmp}/o.yaml:1", "'.inf' is not a finite number"],
     setup=overrides("supervisor: {grace_s: .inf}\n"))
case("start_timeout_s: .nan", [*PLAN, *OV], 2, ["{tmp}/o.yaml:2", "'.nan' is not a finite number"],
     setup=overrides("supervisor:\n  start_timeout_s: .nan\n"))
case("overrides not a mapping", [*PLAN, *OV], 2, ["{tmp}/o.yaml:1", "must be a mapping"],
     setup=overrides("- a\n- b\n"))
case("the 0.1 overrides form", [*PLAN, *OV], 2, ["`backend` is the farmhand 0.1 single-runtime form"],
     setup=overrides("backend: {port: 12000}\n"))
case("unknown backend", ["plan", "--profiles-dir", "{tmp}/profiles"], 2,
     ["deployment.runtimes.llama-server.backend: unknown backend 'llamaserver'",
      "known backends: lemonade, llama-cpp-python, llama-server, ollama, vllm"],
     setup=profiles_dir(lambda t: t.replace("backend: llama-server", "backend: llamaserver")))
case("unknown profile", ["plan", "--profile", "gpu-9000"], 2, ["unknown profile 'gpu-9000'", "known profiles:"])
case("unknown model in a role", [*PLAN, *OV], 2,
     ["deployment.roles.default.use[0].model: no model 'nope'", "known: gemma3-270m"],
     setup=overrides("deployment: {roles: {default: {use: [{model: nope, runtime: llama-server}]}}}\n"))
case("a model file named ..", [*PLAN, *OV], 2, ["models.gemma3-270m.file", "does not match"],
     setup=overrides("models: {gemma3-270m: {file: '..'}}\n"))
case("a typo in a candidate", [*PLAN, *OV], 2, ["Additional properties are not allowed ('ctxsize' was unexpected)"],
     setup=overrides("deployment: {roles: {default: {use: [{model: gemma3-270m, ctxsize: 9}]}}}\n"))
case("ledger is not JSON", PLAN, 2, ["ledger.json:1", "ledger is not valid JSON"],
     setup=lambda fh, tmp: (fh.home / "state").mkdir(parents=True) or write(fh.home / "state/ledger.json", "{oops"))

# --- ports -------------------------------------------------------------------------------------
case("port out of range", [*PLAN, "--port", "70000"], 2, ["70000", "out of range (1024-65535)"])
case("port 8000 on the command line", [*PLAN, "--port", "8000"], 2, ["port 8000 is reserved for LlamaFarm's own server"])
case("port 11540 in overrides", [*PLAN, *OV], 2, ["port 11540 is reserved for LlamaFarm's universal runtime"],
     setup=overrides("deployment: {runtimes: {llama-server: {port: 11540}}}\n"))
case("--port for a runtime that does not exist", [*PLAN, "--port", "nope=12000"], 2,
     ["--port nope=...: no runtime 'nope' in this plan; runtimes: llama-server"])
case("supervisor port equal to a runtime port", [*PLAN, *OV], 2,
     ["supervisor.port: port 12345 is also asked for by llama-server"],
     setup=overrides("supervisor: {port: 12345}\ndeployment: {runtimes: {llama-server: {port: 12345}}}\n"))
case("a port held by a stranger", [*APPLY, "--port", "{stranger_port}"], 3,
     ["port {stranger_port} for llama-server (asked for by --port) is held by pid {stranger_pid}", "http.server",
      "will not stop it"], fixtures=("stranger",))

# --- exposure and secrets ----------------------------------------------------------------------
case("--host smuggled into args", [*PLAN, *OV], 2,
     ["deployment.runtimes.llama-server.args: --host is set by farmhand", "host (beyond 127.0.0.1 it needs api_key_env)"],
     setup=overrides("deployment: {runtimes: {llama-server: {args: ['--host', '0.0.0.0']}}}\n"))
case("a key through env", [*PLAN, *OV], 2, ["env: LLAMA_API_KEY is set by farmhand", "api_key_env"],
     setup=overrides("deployment: {runtimes: {llama-server: {env: {LLAMA_API_KEY: secret123}}}}\n"))
case("beyond loopback without a key", [*PLAN, *OV], 2,
     ["deployment.runtimes.llama-server.host: listening on 0.0.0.0 (beyond this machine) needs api_key_env"],
     setup=overrides("deployment: {runtimes: {llama-server: {host: 0.0.0.0}}}\n"))
case("the key's variable is unset", [*APPLY, *OV], 6,
     ["FH_CATALOGUE_KEY is not set (or empty): refusing to start llama-server without its API key"],
     setup=overrides("supervisor: {port: 0}\ndeployment: {runtimes: {llama-server: {api_key_env: FH_CATALOGUE_KEY}}}\n"),
     env_drop=("FH_CATALOGUE_KEY",))


def local_file(content: bytes, declared: int, sha: str | None = None):
    def setup(fh, tmp):
        path = tmp / "not-a-model.bin"
        path.write_bytes(content)
        model = {"file": "stolen.gguf", "size_bytes": declared, "sources": [f"file://{path}"]}
        if sha:
            model["sha256"] = sha
        write(tmp / "o.yaml", json.dumps({"supervisor": {"port": 0}, "models": {"gemma3-270m": None, "stolen": model},
                                          "deployment": {"roles": {"default": {"use": [
                                              {"model": "stolen", "runtime": "llama-server"}]}},
                                              "runtimes": {"llama-server": {"install": {"method": "path"}}}}}))
        return {"PATH": f"{fh.home.parent / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    return setup


SHADOW = b"root:$6$abcdefgh$hashhashhash:19000:0:99999:7:::\n" * 20
case("a file:// source that is no model and has no sha256", [*APPLY, *OV], 4,
     ["{tmp}/not-a-model.bin is not a recognised model file", "not copied"],
     setup=local_file(SHADOW, len(SHADOW)), fixtures=("fake_llama_server",))
case("a file:// source of another size", [*APPLY, *OV], 4,
     [f"{{tmp}}/not-a-model.bin is {len(SHADOW)} bytes, the model declares size_bytes 999"],
     setup=local_file(SHADOW, 999, "0" * 64), fixtures=("fake_llama_server",))

# --- llamafarm.yaml, paths, the environment ----------------------------------------------------
case("an Ollama mirror with a path", [*PLAN, *OV], 2,
     ["{tmp}/o.yaml (merged onto profile cpu-small): mirrors.ollama", "does not match"],
     setup=overrides("mirrors: {ollama: 'http://127.0.0.1:5000/registry'}\n"))
case("FARMHAND_MIRROR_OLLAMA with a path", PLAN, 2,
     ["FARMHAND_MIRROR_OLLAMA: http://127.0.0.1:5000/r: an Ollama registry mirror is a registry root"],
     setup=lambda fh, tmp: {"FARMHAND_MIRROR_OLLAMA": "http://127.0.0.1:5000/r"})
case("an Ollama install with an unknown method", [*PLAN, *OV], 2,
     ["deployment.runtimes.ollama.install.method", "known: auto, archive, path"],
     setup=overrides("deployment: {runtimes: {ollama: {backend: ollama, install: {method: pip}}}}\n"))
case("malformed llamafarm.yaml", PLAN, 2, ["{project}/llamafarm.yaml:", "malformed YAML"],
     setup=llamafarm_yaml("version: v1\nname: x\nruntime:\n  models: [\n"))
case("runtime is a string", PLAN, 2, ["{project}/llamafarm.yaml:3", "runtime must be a mapping, not 'hello'"],
     setup=llamafarm_yaml("version: v1\nname: x\nruntime: \"hello\"\n"))
case("default_model is a list", PLAN, 2, ["{project}/llamafarm.yaml:5", "runtime.default_model must be a model name"],
     setup=llamafarm_yaml("version: v1\nname: x\nnamespace: d\nruntime:\n  default_model: [1]\n"))
case("--project-dir missing", [*PLAN, "--project-dir", "{tmp}/nowhere"], 2, ["--project-dir {tmp}/nowhere: no such directory"])
case("--project-dir read-only", [*APPLY, *OV], 6, ["{project}: not writable", "nothing was changed"],
     setup=overrides("supervisor: {port: 0}\n"), mount="ro-project")
case("plan --facts with a JSON list", ["plan", "--facts", "{tmp}/facts.json"], 2,
     ["{tmp}/facts.json:1: not a `farmhand detect --json` snapshot"], setup=lambda fh, tmp: write(tmp / "facts.json", "[1]"))
case("plan --facts with {}", ["plan", "--facts", "{tmp}/facts.json"], 2, ["(no os, memory, gpus)"],
     setup=lambda fh, tmp: write(tmp / "facts.json", "{}"))
case("FARMHAND_HOME is a file", PLAN, 2, ["FARMHAND_HOME={home} is not a directory"],
     setup=lambda fh, tmp: write(fh.home, "not a dir"))
case("FARMHAND_HOME read-only", [*APPLY, *OV], 6, ["{home}/state", "Read-only file system", "FARMHAND_HOME"],
     setup=overrides("supervisor: {port: 0}\n"), mount="ro-home")
case("no space left while installing", [*APPLY, *OV], 6, ["cache/downloads", "no space left on device"],
     setup=lambda fh, tmp: None, mount="full-home", fixtures=("big_archive",))
case("a user with no home directory", [*PLAN], 6,
     ["cannot tell this user's home directory (HOME is unset and uid 23456 has no passwd entry)"],
     uid=23456, env_drop=("HOME", "FARMHAND_HOME"))
case("another command holds the home, --no-wait", [*APPLY, "--no-wait"], 3,
     ["another farmhand command is working on this home: pid {pid} (farmhand apply"], fixtures=("holder",))


def snapshot(*roots: Path) -> dict:
    out = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = None
            continue
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for p in sorted(root.rglob("*")):
            st = p.lstat()
            out[str(p)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns,
                           hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
    return out


@pytest.fixture
def fake_llama_server(tmp_path):
    """Something named llama-server on PATH (these cases never start it)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write(bindir / "llama-server", "#!/bin/sh\necho 'version: 0.0.0-catalogue'\n").chmod(0o755)


@pytest.fixture
def big_archive(tmp_path):
    """A 3 MB llama.cpp-style release archive on a loopback server, for a 1 MB FARMHAND_HOME."""
    sys.path.insert(0, str(Path(__file__).parent / "fakes"))
    import zipfile

    from file_server import FileServer

    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "llama.zip", "w") as zf:
        zf.writestr("build/bin/llama-server", os.urandom(3 << 20))
    digest = hashlib.sha256((www / "llama.zip").read_bytes()).hexdigest()
    tiny = tmp_path / "tiny.gguf"  # small enough for the disk: the archive is what does not fit
    tiny.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 1000)
    with FileServer(www) as server:
        write(tmp_path / "o.yaml", json.dumps({
            "supervisor": {"port": 0},
            "deployment": {"runtimes": {"llama-server": {"install": {
                "method": "archive", "url": server.url("llama.zip"), "sha256": digest}}},
                "roles": {"default": {"use": [{"model": "tiny", "runtime": "llama-server"}]}}},
            "models": {"tiny": {"file": "tiny.gguf", "size_bytes": 1008, "sources": [f"file://{tiny}"],
                                "sha256": hashlib.sha256(tiny.read_bytes()).hexdigest()}}}))
        yield


@pytest.fixture
def holder(farmhand):
    lock = HomeLock(farmhand.home / "state" / "farmhand.lock", "apply")
    lock.acquire()
    yield os.getpid()
    lock.release()


def _mount_wrapper(kind: str, farmhand) -> list[str]:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a tmpfs in a private mount namespace")
    target = {"ro-project": farmhand.project, "ro-home": farmhand.home, "full-home": farmhand.home}[kind]
    target.mkdir(parents=True, exist_ok=True)
    opts = "size=1m,ro" if kind.startswith("ro") else "size=1m"
    script = f'mount -t tmpfs -o {opts} tmpfs "{target}" && exec "$@"'
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_bad_input(c: Case, farmhand, tmp_path, request, capsys):
    try:
        _run_case(c, farmhand, tmp_path, request)
    except pytest.skip.Exception:
        SKIPPED.append(c.name)
        raise
    RAN.append(c.name)


def _run_case(c: Case, farmhand, tmp_path, request) -> None:
    subst = {"tmp": str(tmp_path), "home": str(farmhand.home), "project": str(farmhand.project)}
    for name in c.fixtures:
        value = request.getfixturevalue(name)
        if name == "stranger":
            subst |= {"stranger_port": str(value[0]), "stranger_pid": str(value[1].pid)}
        if name == "holder":
            subst["pid"] = str(value)
    extra = c.setup(farmhand, tmp_path) if c.setup else None
    env = farmhand.env | (extra if isinstance(extra, dict) else {})
    for var in c.env_drop:
        env.pop(var, None)
    args = [a.format(**subst) for a in c.args]
    argv = [sys.executable, "-m", "supervisor", *args]
    if c.uid is not None:
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            pytest.skip("needs root and setpriv to run as a user without a passwd entry")
        site = next(p for p in sys.path if p.endswith("site-packages") and str(REPO) in p)
        env |= {"PYTHONPATH": f"{REPO}{os.pathsep}{site}"}
        argv = ["setpriv", f"--reuid={c.uid}", f"--regid={c.uid}", "--clear-groups", "/usr/bin/python3", "-m",
                "supervisor", *args]
    if c.mount:
        argv = _mount_wrapper(c.mount, farmhand) + argv
    before = snapshot(farmhand.home, farmhand.project)
    proc = subprocess.run(argv, cwd="/" if c.uid else farmhand.project, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == c.code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("farmhand: error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    for words in c.says:
        assert words.format(**subst) in errors[0], (words.format(**subst), errors[0])
    assert snapshot(farmhand.home, farmhand.project) == before, "the command changed the home or the project"


def test_catalogue_count(capsys, request):
    """Every selected case either passed all its checks or was skipped with its reason; a case
    that failed has failed above, and this count says how many of the catalogue really held."""
    selected = [i.callspec.id for i in request.session.items
                if getattr(i, "originalname", "") == "test_bad_input" and i.module.__name__ == __name__]
    with capsys.disabled():
        print(f"\n  bad-input catalogue: {len(RAN)} of {len(CASES)} cases held ({len(SKIPPED)} skipped here), each "
              "one line, no traceback, nothing changed", end="")
    missing = sorted(set(selected) - set(RAN) - set(SKIPPED))
    assert not missing, f"catalogue cases that did not hold: {missing}"
    assert len({c.name for c in CASES}) == len(CASES), "two catalogue cases share a name"


def test_relative_paths_are_resolved_against_the_working_directory(farmhand, tmp_path):
    """--overrides and --profiles-dir relative to where the user is, not to --project-dir."""
    cwd = tmp_path / "here"
    cwd.mkdir()
    port = free_port()
    write(cwd / "o.yaml", f"deployment: {{runtimes: {{llama-server: {{port: {port}}}}}}}\n")
    shutil.copytree(REPO / "profiles", cwd / "profiles")
    proc = subprocess.run([sys.executable, "-m", "supervisor", "plan", "--json", "--overrides", "o.yaml",
                           "--profiles-dir", "profiles", "--project-dir", str(farmhand.project)],
                          cwd=cwd, env=farmhand.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["profile"]["source"] == "profiles/" + plan["profile"]["name"] + ".yaml"
    assert plan["runtimes"][0]["port"] == port
