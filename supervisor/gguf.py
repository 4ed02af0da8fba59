"""GGUF headers: what a model file says about itself, read without loading the weights.

Memory planning needs a model's shape (layers, KV heads, head sizes) and the launcher needs to
know whether the file carries a chat template. Both are in the GGUF metadata at the start of
the file: read it from a local file, or from the first few MB of a remote one with HTTP Range
requests (the way GPUStack's gguf-parser does), growing the window until the metadata ends.

Format (github.com/ggml-org/ggml docs/gguf.md): b"GGUF", uint32 version, then tensor and KV
counts (uint64; uint32 in version 1), then the KV pairs: a string key, a uint32 type, a value.
Strings are a length (uint64; uint32 in v1) and UTF-8 bytes; arrays are an element type, a
count and the elements. Little-endian throughout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MAGIC = b"GGUF"
FIRST_WINDOW = 1 << 22  # 4 MiB; most headers fit, big vocabularies need one or two more rounds
MAX_METADATA = 256 << 20  # a header larger than this is not a header

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class GGUFError(ValueError):
    """Not a GGUF file, or a header that cannot be read."""


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF header says about a model: architecture, context, shape, chat template."""

    version: int
    architecture: str | None
    name: str | None
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: tuple[int, ...] | None  # one entry per layer (models may vary it by layer)
    key_length: int | None
    value_length: int | None
    sliding_window: int | None
    vocab_size: int | None
    chat_template: str | None
    metadata_bytes: int  # where the KV section ended: how much had to be read
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> int | None:
        """K and V cache for one token of context, all layers (f16 cache by default)."""
        if not self.block_count or not self.head_count_kv:
            return None
        head = self.embedding_length // self.head_count if self.embedding_length and self.head_count else None
        k = self.key_length or head
        v = self.value_length or head
        if not k or not v:
            return None
        kv_heads = self.head_count_kv
        per_layer = [kv_heads[i] if i < len(kv_heads) else kv_heads[-1] for i in range(self.block_count)]
        return int(sum(h * (k + v) for h in per_layer) * bytes_per_element)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in (
            "version", "architecture", "name", "context_length", "block_count", "embedding_length", "head_count",
            "head_count_kv", "key_length", "value_length", "sliding_window", "vocab_size", "metadata_bytes")} | {
            "has_chat_template": self.has_chat_template}

    @classmethod
    def from_json(cls, data: dict) -> GGUFInfo:
        fields = {k: data.get(k) for k in (
            "version", "architecture", "name", "context_length", "block_count", "embedding_length", "head_count",
            "key_length", "value_length", "sliding_window", "vocab_size", "metadata_bytes")}
        kv = data.get("head_count_kv")
        fields["head_count_kv"] = tuple(kv) if kv else None
        # The template's text is not kept in caches: only whether there is one matters there.
        fields["chat_template"] = "(present)" if data.get("has_chat_template") else None
        return cls(**fields)


class _NeedMore(Exception):
    pass


class _Cursor:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _NeedMore
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise _NeedMore
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def skip_strings(self, count: int, len_fmt: str) -> None:
        # A vocabulary is 100k-260k strings: walk the lengths without building the strings.
        data, pos, step = self.data, self.pos, struct.calcsize(len_fmt)
        unpack = struct.Struct(len_fmt).unpack_from
        end = len(data)
        for _ in range(count):
            if pos + step > end:
                raise _NeedMore
            (n,) = unpack(data, pos)
            pos += step + n
        if pos > end:
            raise _NeedMore
        self.pos = pos


def parse(data: bytes) -> GGUFInfo:
    """Parse a GGUF header from its first bytes; GGUFError if they are not enough or not GGUF."""
    try:
        return _parse(data)
    except _NeedMore:
        raise GGUFError(f"the metadata does not end within the first {len(data)} bytes") from None


def _parse(data: bytes) -> GGUFInfo:
    cur = _Cursor(data)
    magic = cur.take(4)
    if magic != MAGIC:
        raise GGUFError(f"not a GGUF file (first bytes {magic!r}, expected {MAGIC!r})")
    version = cur.unpack("<I")
    if version not in (1, 2, 3):
        raise GGUFError(f"unsupported GGUF version {version}")
    count_fmt = "<I" if version == 1 else "<Q"
    cur.unpack(count_fmt)  # tensor count: not needed
    kv_count = cur.unpack(count_fmt)
    if kv_count > 100_000:
        raise GGUFError(f"implausible metadata count {kv_count}")
    meta: dict[str, object] = {}
    lengths: dict[str, int] = {}
    for _ in range(kv_count):
        key = cur.take(cur.unpack(count_fmt)).decode("utf-8", errors="replace")
        vtype = cur.unpack("<I")
        value, length = _value(cur, vtype, count_fmt, keep_arrays=not key.startswith("tokenizer.ggml."))
        meta[key] = value
        if length is not None:
            lengths[key] = length
    arch = meta.get("general.architecture")
    a = f"{arch}." if isinstance(arch, str) else "\0"

    def num(key: str) -> int | None:
        value = meta.get(a + key)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    kv_raw = meta.get(a + "attention.head_count_kv", meta.get(a + "attention.head_count"))
    if isinstance(kv_raw, list):
        kv_heads = tuple(int(x) for x in kv_raw) or None
    elif isinstance(kv_raw, (int, float)):
        kv_heads = (int(kv_raw),)
    else:
        kv_heads = None
    template = meta.get("tokenizer.chat_template")
    return GGUFInfo(
        version=version, architecture=arch if isinstance(arch, str) else None,
        name=meta.get("general.name") if isinstance(meta.get("general.name"), str) else None,
        context_length=num("context_length"), block_count=num("block_count"),
        embedding_length=num("embedding_length"), head_count=num("attention.head_count"),
        head_count_kv=kv_heads, key_length=num("attention.key_length"), value_length=num("attention.value_length"),
        sliding_window=num("attention.sliding_window"), vocab_size=lengths.get("tokenizer.ggml.tokens"),
        chat_template=template if isinstance(template, str) and template.strip() else None,
        metadata_bytes=cur.pos,
        extra={k: v for k, v in meta.items() if k.startswith(("general.", a)) and not isinstance(v, list)},
    )


def _value(cur: _Cursor, vtype: int, count_fmt: str, keep_arrays: bool):
    """(value, array length or None). Large tokenizer arrays are skipped, only counted."""
    if vtype in _SCALARS:
        return cur.unpack(_SCALARS[vtype]), None
    if vtype == STRING:
        return cur.take(cur.unpack(count_fmt)).decode("utf-8", errors="replace"), None
    if vtype == ARRAY:
        etype = cur.unpack("<I")
        count = cur.unpack(count_fmt)
        if etype in _SCALARS:
            size = struct.calcsize(_SCALARS[etype])
            raw = cur.take(size * count)
            if not keep_arrays or count > 4096:
                return None, count
            return list(struct.unpack(f"<{count}{_SCALARS[etype][1]}", raw)), count
        if etype == STRING:
            if not keep_arrays or count > 4096:
                cur.skip_strings(count, count_fmt)
                return None, count
            return [cur.take(cur.unpack(count_fmt)).decode("utf-8", errors="replace") for _ in range(count)], count
        if etype == ARRAY:
            return [_value(cur, ARRAY, count_fmt, False)[0] for _ in range(count)], count
        raise GGUFError(f"unknown GGUF array element type {etype}")
    raise GGUFError(f"unknown GGUF value type {vtype}")


def read_growing(read_prefix: Callable[[int], bytes], limit: int = MAX_METADATA) -> GGUFInfo:
    """Parse a header through `read_prefix(n)` (the file's first n bytes, or fewer at its end),
    asking for a larger prefix each time the metadata runs past what was read."""
    size = FIRST_WINDOW
    while True:
        data = read_prefix(size)
        try:
            return _parse(data)
        except _NeedMore:
            if len(data) < size:
                raise GGUFError(f"the file ends ({len(data)} bytes) inside its GGUF metadata") from None
            if size >= limit:
                raise GGUFError(f"GGUF metadata larger than {limit >> 20} MiB") from None
            size = min(size * 4, limit)


def read_file(path: Path) -> GGUFInfo:
    """The header of a local GGUF file."""
    with open(path, "rb") as fh:
        def prefix(n: int) -> bytes:
            fh.seek(0)
            return fh.read(n)

        return read_growing(prefix)


def read_url(url: str, headers: dict | None = None, timeout: float = 10.0) -> GGUFInfo:
    """The header of a remote GGUF file, through HTTP Range requests (a few MB, not the file)."""
    import requests

    def prefix(n: int) -> bytes:
        resp = requests.get(url, headers={**(headers or {}), "Range": f"bytes=0-{n - 1}"}, timeout=timeout,
                            stream=True)
        with resp:
            if resp.status_code not in (200, 206):
                raise GGUFError(f"HTTP {resp.status_code} for {url}")
            # A server that ignores Range sends the whole file: read only what was asked for.
            out = bytearray()
            for chunk in resp.iter_content(1 << 20):
                out += chunk
                if len(out) >= n:
                    break
            return bytes(out[:n])

    return read_growing(prefix)
