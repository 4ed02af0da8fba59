"""Memory planning per device: what each model needs loaded, and where it fits.

Devices are the host's GPUs (each with a budget: a fraction of its VRAM; Apple's Metal
working set of unified memory) and its RAM (a fraction of the total) for CPU runtimes. A
model's need is weights + KV cache for its context + runtime overhead, computed from its GGUF
header when one is at hand (local file, or the first MB of a remote one), otherwise from the
declared `memory_gib`, otherwise from the file size; the estimate says which. Models loaded
together on a device must fit together. A runtime lives on one device or, when its backend can
split a model (llama.cpp's layer split, vLLM's tensor parallelism, Ollama's scheduler), on
several GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .deployment import ModelSpec
from .gguf import GGUFInfo

GIB = 1024**3
MIB = 1024**2
DEFAULT_GPU_FRACTION = 0.9
DEFAULT_RAM_FRACTION = 0.7
# Measured on llama-server with Gemma 3 270M (2 cores): RSS 360 MB at ctx 2048 and 386 MB at
# 8192 for a 253 MB file. Compute buffers and the process itself take ~100 MB there; the
# fixed part plus a share of the weights keeps the estimate an upper bound for larger models.
OVERHEAD_FIXED = 128 * MIB
OVERHEAD_SHARE = 0.08
UNKNOWN_HEADER_FACTOR = 1.25
VARIANT_VENDORS = {"cuda": {"nvidia"}, "rocm": {"amd"}, "vulkan": {"nvidia", "amd", "intel"}, "metal": {"apple"}}


def gib(n: float | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f}"


@dataclass(frozen=True)
class Device:
    """A place models go: a GPU (by its position in `farmhand detect`) or system RAM, with its budget."""

    id: str  # "gpu0", "gpu1" (position in `farmhand detect`), "ram"
    kind: str  # "gpu" | "ram"
    name: str
    vendor: str | None = None
    index: int | None = None  # the vendor tool's index (CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES)
    total_bytes: int | None = None
    budget_bytes: int | None = None  # None: unknown (no VRAM reading); not checked, and said so
    budget_note: str = ""
    rocm_supported: bool = False

    def label(self) -> str:
        return f"{self.id} {self.name}"


@dataclass(frozen=True)
class Estimate:
    """The memory one model needs: weights, KV cache, overhead, and how each was found."""

    weights: int
    kv: int
    overhead: int
    basis: str

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.overhead

    def text(self) -> str:
        return f"{gib(self.total)} GiB (weights {gib(self.weights)} + KV {gib(self.kv)} + overhead {gib(self.overhead)})"

    def scaled(self, share: float) -> Estimate:
        return Estimate(int(self.weights * share), int(self.kv * share), int(self.overhead * share), self.basis)


def devices_from_facts(facts: dict, settings: dict | None = None) -> list[Device]:
    settings = settings or {}
    gpu_fraction = float(settings.get("gpu_fraction", DEFAULT_GPU_FRACTION))
    ram_fraction = float(settings.get("ram_fraction", DEFAULT_RAM_FRACTION))
    devices = []
    seen: dict[str, int] = {}
    for position, gpu in enumerate(facts.get("gpus") or []):
        # The vendor runtime's own numbering (CUDA_VISIBLE_DEVICES counts NVIDIA GPUs only).
        vendor_index = gpu.get("index", seen.get(gpu.get("vendor"), 0))
        seen[gpu.get("vendor")] = seen.get(gpu.get("vendor"), 0) + 1
        vram = gpu.get("vram_bytes")
        if gpu.get("unified_memory"):
            budget, note = vram, "Metal working set of unified memory"
        elif vram:
            budget, note = int(vram * gpu_fraction), f"{gpu_fraction:.0%} of {gib(vram)} GiB VRAM"
        else:
            budget, note = None, gpu.get("note") or "VRAM unknown"
        devices.append(Device(id=f"gpu{position}", kind="gpu", name=gpu.get("name") or "GPU", vendor=gpu.get("vendor"),
                              index=vendor_index, total_bytes=vram, budget_bytes=budget,
                              budget_note=note, rocm_supported=bool(gpu.get("rocm_supported"))))
    total = (facts.get("memory") or {}).get("total_bytes")
    devices.append(Device(id="ram", kind="ram", name="RAM", total_bytes=total,
                          budget_bytes=int(total * ram_fraction) if total else None,
                          budget_note=f"{ram_fraction:.0%} of {gib(total)} GiB RAM" if total else "RAM unknown"))
    return devices


def estimate(model: ModelSpec, info: GGUFInfo | None, ctx: int) -> Estimate:
    per_token = info.kv_bytes_per_token() if info else None
    if per_token:
        weights = model.size_bytes
        basis = (f"GGUF header: {info.architecture}, {info.block_count} layers, "
                 f"{'/'.join(map(str, sorted(set(info.head_count_kv or ()))))} KV heads, {per_token} B/token")
        return Estimate(weights, per_token * ctx, OVERHEAD_FIXED + int(weights * OVERHEAD_SHARE), basis)
    if model.memory_gib:
        return Estimate(int(model.memory_gib * GIB), 0, 0, f"declared memory_gib {model.memory_gib:g} (no GGUF header)")
    weights = model.size_bytes
    return Estimate(weights, 0, int(weights * (UNKNOWN_HEADER_FACTOR - 1)),
                    f"{UNKNOWN_HEADER_FACTOR:g} x file size (no GGUF header)")


@dataclass(frozen=True)
class Placement:
    """Where one runtime's memory goes: device ids and the share of it each takes."""

    devices: tuple[str, ...]
    shares: tuple[float, ...]
    split: str | None = None  # None | "layer" | "tensor" | "scheduler"

    @property
    def on_gpu(self) -> bool:
        return self.devices[0] != "ram"


@dataclass
class Item:
    """One line of a memory plan: what it is and its estimate."""

    label: str
    estimate: Estimate


@dataclass
class DevicePool:
    """Device budgets and what selection has placed on each (mutable while selecting)."""

    devices: list[Device]
    items: dict[str, list[Item]] = field(default_factory=dict)

    def device(self, device_id: str) -> Device:
        return next(d for d in self.devices if d.id == device_id)

    def used(self, device_id: str) -> int:
        return sum(i.estimate.total for i in self.items.get(device_id, []))

    def free(self, device_id: str) -> int | None:
        budget = self.device(device_id).budget_bytes
        return None if budget is None else budget - self.used(device_id)

    def fits(self, placement: Placement, need: Estimate) -> bool:
        for dev, share in zip(placement.devices, placement.shares):
            free = self.free(dev)
            if free is not None and need.total * share > free:
                return False
        return True

    def commit(self, placement: Placement, label: str, need: Estimate) -> None:
        for dev, share in zip(placement.devices, placement.shares):
            self.items.setdefault(dev, []).append(Item(label, need.scaled(share)))

    def candidates(self, variant: str) -> list[Device]:
        """The GPUs a runtime of this variant can use (a working driver; ROCm needs a supported gfx)."""
        vendors = VARIANT_VENDORS.get(variant)
        if not vendors:
            return []
        return [d for d in self.devices if d.kind == "gpu" and d.vendor in vendors
                and (variant != "rocm" or d.rocm_supported)
                and (d.budget_bytes is not None or d.vendor == "intel")]

    def place(self, variant: str, gpus, split: str | None, need: Estimate) -> Placement | str:
        """Where a new runtime fits (a Placement), or why it does not (a str with the sums)."""
        if variant in ("cpu", "npu") or gpus == "none":
            placement = Placement(("ram",), (1.0,))
            return placement if self.fits(placement, need) else self.no_room(["ram"], need)
        options = self.candidates(variant)
        if isinstance(gpus, tuple):
            wanted = {f"gpu{i}" for i in gpus}
            unknown = wanted - {d.id for d in options}
            if unknown:
                return (f"{', '.join(sorted(unknown))}: not a usable GPU for variant {variant} "
                        f"(usable: {', '.join(d.id for d in options) or 'none'})")
            options = [d for d in options if d.id in wanted]
        if not options:
            vendors = "/".join(sorted(VARIANT_VENDORS.get(variant, {"?"})))
            return f"no usable {vendors} GPU for variant {variant}"
        ranked = sorted(options, key=lambda d: -(self.free(d.id) if self.free(d.id) is not None else 1 << 62))
        if gpus == "all" or (isinstance(gpus, tuple) and len(gpus) > 1):
            if len(ranked) > 1 and not split:
                return f"gpus: {len(ranked)} named, but this backend cannot split a model over {len(ranked)} GPUs"
            if split == "tensor" and len(ranked) & (len(ranked) - 1):
                return f"gpus: tensor parallelism needs a power of two GPUs, not {len(ranked)}"
            sets = [ranked]
        else:
            sets = [[d] for d in ranked]
            if split:  # the fewest GPUs that hold it, most free first
                sets += [ranked[:k] for k in range(2, len(ranked) + 1) if split != "tensor" or not k & (k - 1)]
        for chosen in sets:
            placement = self._spread(chosen, split)
            if self.fits(placement, need):
                return placement
        return self.no_room([d.id for d in ranked], need)

    def _spread(self, chosen: list[Device], split: str | None) -> Placement:
        if len(chosen) == 1:
            return Placement((chosen[0].id,), (1.0,))
        free = [self.free(d.id) for d in chosen]
        if split == "tensor" or any(f is None for f in free):
            shares = tuple(1.0 / len(chosen) for _ in chosen)
        else:  # layer split and schedulers: in proportion to what each GPU has free
            total = sum(max(f, 0) for f in free) or 1
            shares = tuple(max(f, 0) / total for f in free)
        return Placement(tuple(d.id for d in chosen), shares, split)

    def no_room(self, device_ids: list[str], need: Estimate) -> str:
        return f"needs {need.text()}; " + "; ".join(self.describe(d) for d in device_ids)

    def describe(self, device_id: str) -> str:
        """'gpu0 RTX 4090: qwen 4.9 + gemma 0.3 + KV 1.1 + overhead 0.6 = 6.9 of 21.6 GiB (90% of 24.0 GiB VRAM)'."""
        dev = self.device(device_id)
        items = self.items.get(device_id, [])
        parts = [f"{i.label} {gib(i.estimate.weights)}" for i in items]
        kv = sum(i.estimate.kv for i in items)
        overhead = sum(i.estimate.overhead for i in items)
        if kv:
            parts.append(f"KV {gib(kv)}")
        if overhead:
            parts.append(f"overhead {gib(overhead)}")
        used = " + ".join(parts) + f" = {gib(self.used(device_id))}" if parts else "empty"
        return f"{dev.label()}: {used} of {gib(dev.budget_bytes)} GiB ({dev.budget_note})"

    def summary(self) -> list[dict]:
        return [{"device": d.id, "name": d.name, "budget_bytes": d.budget_bytes, "used_bytes": self.used(d.id),
                 "budget": d.budget_note, "models": [i.label for i in self.items.get(d.id, [])],
                 "text": self.describe(d.id)} for d in self.devices if d.id in self.items]
