"""Host facts: probes (how to read) plus pure parsers (what it means), gathered into a snapshot."""


# What moves while the host stays the same machine: left out of `detect --stable`.
VOLATILE = {"memory": ("available_bytes",), "disk": ("free_bytes",)}
VOLATILE_GPU = ("vram_free_bytes", "free_mib")


def stable_facts(facts: dict) -> dict:
    """The facts without what changes from one run to the next (a fact file compared run to
    run must change only when the host does)."""
    out = {k: v for k, v in facts.items() if k != "probes"}
    for section, keys in VOLATILE.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    out["gpus"] = [{k: v for k, v in g.items() if k not in VOLATILE_GPU} for g in out.get("gpus") or []]
    return out
