"""Step ids, which are also the ledger's keys for what the steps produced: written here once,
parsed here once (`destroy` and `models list` read them back)."""

from __future__ import annotations

MODEL = "model"
INSTALL = "install"
PULL = "pull"
IMPORT = "import"
LOAD = "load"
RUNTIME_UP = "runtime:up"
SCRATCH = "scratch"
RUNTIME_FILE = "runtime-file"


def model(name: str) -> str:
    """A model in farmhand's store (a file, or a Hugging Face repo)."""
    return f"{MODEL}:{name}"


def install(key: str) -> str:
    """One backend install, by its install key."""
    return f"{INSTALL}:{key}"


def into_backend(imported: bool, runtime: str, model_name: str) -> str:
    """A model put into a backend's own store: imported from farmhand's, or pulled by the backend."""
    return f"{IMPORT if imported else PULL}:{runtime}/{model_name}"


def scratch(runtime: str) -> str:
    """A runtime's own directory for its temporaries and caches."""
    return f"{SCRATCH}:{runtime}"


def runtime_file(runtime: str, name: str) -> str:
    """A file a runtime reads that the plan writes (a gateway's config)."""
    return f"{RUNTIME_FILE}:{runtime}/{name}"


def load(runtime: str, model_name: str) -> str:
    return f"{LOAD}:{runtime}/{model_name}"


def model_name(key: str) -> str | None:
    """The model a `model:NAME` key names (None for any other key)."""
    kind, _, rest = key.partition(":")
    return rest if kind == MODEL else None


def backend_model(key: str) -> tuple[str, str] | None:
    """(runtime, model) of a pull/import key (None for any other key)."""
    kind, _, rest = key.partition(":")
    if kind not in (PULL, IMPORT) or "/" not in rest:
        return None
    runtime, _, name = rest.partition("/")
    return runtime, name
