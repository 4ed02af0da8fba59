"""Where farmhand keeps things: one object that every other module asks.

User mode follows the XDG base directories (platformdirs), `--system` uses the FHS locations,
and FARMHAND_HOME relocates everything below one directory (tests and portable installs).
Nothing else in the code builds a path under farmhand's directories by hand.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput, EnvironmentProblem

APP = "farmhand"


SOCKET_PATH_MAX = 107  # sockaddr_un.sun_path less its terminating NUL (Linux)
SOCKET_NAME_ROOM = 40  # what a runtime appends to its TMPDIR for a socket (a uuid and a slash)


@dataclass(frozen=True)
class Paths:
    """Where farmhand keeps things on this host (its home, a user's dirs, or the system's)."""

    data: Path  # backends' prefixes and the model store
    state: Path  # ledger, logs, pid/lock files, supervisor address
    config: Path  # user overrides, supervisor settings
    cache: Path  # built wheels and other reproducible artifacts
    mode: str  # "home" | "user" | "system"

    @property
    def backends(self) -> Path:
        return self.data / "backends"

    @property
    def models(self) -> Path:
        return self.data / "models"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def ledger(self) -> Path:
        return self.state / "ledger.json"

    @property
    def hf_home(self) -> Path:
        """Hugging Face's cache (HF_HOME) for farmhand and the runtimes it starts (vLLM)."""
        return self.models / "huggingface"

    @property
    def store_index(self) -> Path:
        """What `destroy` keeps of the ledger when it keeps the models (see ledger.py)."""
        return self.models / "store.json"

    @property
    def runtimes(self) -> Path:
        """The runtime specs apply rendered; the supervisor runs what is here."""
        return self.state / "runtimes.json"

    @property
    def deployment(self) -> Path:
        """The deployment apply converged to (roles, models, remote entries): what `status` shows."""
        return self.state / "deployment.json"

    @property
    def processes(self) -> Path:
        """The supervisor's record of the runtime sessions it started (process identities)."""
        return self.state / "processes.json"

    @property
    def home_lock(self) -> Path:
        """Held by the one converging command (apply, destroy, up, down) working on this home."""
        return self.state / "farmhand.lock"

    @property
    def supervisor_lock(self) -> Path:
        return self.state / "supervisor.lock"

    @property
    def supervisor_address(self) -> Path:
        return self.state / "supervisor.json"

    @property
    def supervisor_log(self) -> Path:
        """The detached supervisor's own output (systemd's journal has it under a unit)."""
        return self.logs / "supervisor.log"

    def runtime_log(self, runtime: str) -> Path:
        return self.logs / f"{runtime}.log"

    def runtime_file(self, runtime: str, name: str) -> Path:
        """A file a runtime reads that the plan writes (a gateway's config, a router's presets)."""
        return self.state / "runtime-files" / runtime / name

    def backend_store(self, backend: str) -> Path:
        """A backend's own model store (Ollama's, Lemonade's), inside farmhand's."""
        return self.models / backend

    def install_prefix(self, backend: str, key: str) -> Path:
        """One backend install, by its install key: an upgrade goes beside the old one."""
        return self.backends / backend / key

    @property
    def memo(self) -> Path:
        """What farmhand learned that is cheap to forget (rendered templates, parsed headers)."""
        return self.cache / "memo.json"

    @property
    def tmp(self) -> Path:
        """pip's and builds' temporaries: never the host's /tmp (an interrupted one is swept)."""
        return self.cache / "tmp"

    def runtime_scratch(self, runtime: str) -> Path:
        """A runtime's own temporaries and caches (vLLM's TMPDIR, torch's compile cache): never the
        host's ~/.cache, and removed with the runtime by `destroy`. A runtime makes Unix sockets
        in it (vLLM's ZeroMQ: 36-character names), and a socket's path is at most 107 bytes: under
        a home too deep for that, it is a short owner-only directory of this home's in /tmp."""
        scratch = self.cache / "runtimes" / runtime
        if len(os.fsencode(scratch)) + SOCKET_NAME_ROOM <= SOCKET_PATH_MAX:
            return scratch
        return Path(f"{self.short_scratch_prefix}-{runtime}")

    @property
    def short_scratch_prefix(self) -> Path:
        """/tmp/farmhand-UID-TAG: what this home's short scratch directories start with (TAG is
        this home's), so `destroy` finds them even when the ledger that listed them is lost."""
        tag = hashlib.sha256(os.fsencode(self.cache)).hexdigest()[:12]
        return Path("/tmp") / f"farmhand-{os.geteuid()}-{tag}"

    @property
    def overrides(self) -> Path:
        return self.config / "overrides.yaml"

    @property
    def downloads(self) -> Path:
        """Release archives being fetched or kept for a re-install (verified by digest)."""
        return self.cache / "downloads"

    @property
    def launcher_dir(self) -> Path:
        """Where the `farmhand` launcher goes: a directory PATH usually has in this mode."""
        if self.mode == "system":
            return Path("/usr/local/bin")
        if self.mode == "user":
            return Path.home() / ".local" / "bin"
        return self.data.parent / "bin"

    @property
    def launcher(self) -> Path:
        return self.launcher_dir / "farmhand"

    @property
    def wheelhouse(self) -> Path:
        """Built backend wheels, keyed by build flags. FARMHAND_WHEELHOUSE moves it (tests keep
        it inside the checkout so one clone builds llama-server once)."""
        env = os.environ.get("FARMHAND_WHEELHOUSE")
        return Path(env) if env else self.cache / "wheels"

    def roots(self) -> list[Path]:
        return [self.data, self.state, self.config, self.cache]


def private_dir(path: Path, before_each=None) -> list[Path]:
    """Create a directory and any missing parents readable by their owner only (0700): state,
    logs and models hold prompts, keys' names and weights. `before_each(dir)` runs before each
    one is made (the ledger records it first). Returns the directories it made, outermost first."""
    missing = []
    probe = Path(path)
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    made = []
    for directory in reversed(missing):
        if before_each is not None:
            before_each(directory)
        directory.mkdir(mode=0o700, exist_ok=True)
        made.append(directory)
    return made


def resolve(system: bool = False) -> Paths:

    home = os.environ.get("FARMHAND_HOME")
    if home:
        root = Path(home).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise BadInput(f"FARMHAND_HOME={home} is not a directory; point it at a directory (it is created if missing)")
        if len(root.parts) < 3 or root == Path(os.path.expanduser("~")).resolve():
            # destroy empties data/, state/, cache/ under it: never at the top of a shared tree
            raise BadInput(f"FARMHAND_HOME={home} is {root}, which is not a directory of farmhand's own (its data/, "
                           "state/ and cache/ go there and destroy removes them); use one like ~/.farmhand-home")
        return Paths(root / "data", root / "state", root / "config", root / "cache", "home")
    if system:
        return Paths(
            Path("/opt") / APP,
            Path("/var/lib") / APP,
            Path("/etc") / APP,
            Path("/var/cache") / APP,
            "system",
        )
    user_home = os.path.expanduser("~")
    if user_home == "~" or not os.path.isabs(user_home):
        raise EnvironmentProblem(f"cannot tell this user's home directory (HOME is unset and uid {os.getuid()} has no "
                                 "passwd entry): set HOME, or FARMHAND_HOME=DIR, or run with --system as root")
    import platformdirs

    return Paths(
        Path(platformdirs.user_data_dir(APP)),
        Path(platformdirs.user_state_dir(APP)),
        Path(platformdirs.user_config_dir(APP)),
        Path(platformdirs.user_cache_dir(APP)),
        "user",
    )
