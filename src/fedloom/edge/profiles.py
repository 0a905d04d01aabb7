"""Device profiles: what a class of device declares it can run.

A profile is the hardware facts the server plans with: memory, whether int8 kernels,
fp16 and bf16 arithmetic are available, how many threads local training may use, the
CPU architecture (which picks the int8 backend: fbgemm/x86 on x86-64, qnnpack on ARM),
and optionally a profiled training speed. Simulated tiers carry the built-in profiles
by name (``sim.devices.DEFAULT_TIERS``); a deployed client reports its own
(:func:`detect_profile`) when it joins.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, replace
from typing import Literal

from fedloom.errors import ConfigError

Arch = Literal["x86", "arm"]
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
ARCHS: tuple[Arch, ...] = ("x86", "arm")


@dataclass(frozen=True)
class DeviceProfile:
    """``memory_mb``: memory local training may use (inf: unlimited); ``int8``,
    ``fp16``, ``bf16``: the arithmetic the device runs fast; ``threads``: threads for
    local training; ``arch``: ``"x86"`` or ``"arm"``; ``ms_per_sample``: profiled
    forward+backward cost of one example (None: unknown, measured later)."""

    name: str
    memory_mb: float = math.inf
    int8: bool = True
    fp16: bool = False
    bf16: bool = False
    threads: int = 1
    arch: Arch = "x86"
    ms_per_sample: float | None = None

    def __post_init__(self) -> None:
        where = f"device profile {self.name!r}"
        if not self.name or len(self.name) > 64:
            raise ConfigError(f"device profile name {self.name!r}: expected 1-64 characters")
        if not (self.memory_mb > 0) or math.isnan(self.memory_mb):
            raise ConfigError(f"{where}: memory_mb = {self.memory_mb!r} must be > 0")
        for flag in ("int8", "fp16", "bf16"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{where}: {flag} = {getattr(self, flag)!r} must be a bool")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int):
            raise ConfigError(f"{where}: threads = {self.threads!r} must be an integer")
        if not 1 <= self.threads <= 1024:
            raise ConfigError(f"{where}: threads = {self.threads!r} must be in [1, 1024]")
        if self.arch not in ARCHS:
            raise ConfigError(f"{where}: arch = {self.arch!r}: expected one of {ARCHS}")
        ms = self.ms_per_sample
        if ms is not None and not (math.isfinite(ms) and ms > 0):
            raise ConfigError(f"{where}: ms_per_sample = {ms!r} must be a finite number > 0")

    @property
    def quantization_backend(self) -> str:
        """torch's int8 engine for this architecture: fbgemm's x86 kernels or qnnpack."""
        return "qnnpack" if self.arch == "arm" else "x86"

    def training_precision(self, allow_reduced: bool) -> Precision:
        """The precision local training runs in: bf16 where the device has it (the range
        of fp32, so no loss scaling), else fp16, else fp32; fp32 unless
        ``allow_reduced``."""
        if allow_reduced and self.bf16:
            return "bf16"
        if allow_reduced and self.fp16:
            return "fp16"
        return "fp32"


# Built-in profiles, one per simulated tier (sim.devices.DEFAULT_TIERS) plus a server CPU.
# Memory is what training may use, not the device's RAM. Phones: ARM with fp16 (ARMv8.2
# FP16 arithmetic is on most phones since 2018, bf16 only on recent flagships); IoT:
# int8-only microcontroller-class boards.
BUILTIN_PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("x86_server", math.inf, True, False, True, 4, "x86"),
        DeviceProfile("high_end_phone", 8192.0, True, True, True, 4, "arm"),
        DeviceProfile("mid_phone", 4096.0, True, True, False, 2, "arm"),
        DeviceProfile("low_end_phone", 2048.0, True, False, False, 2, "arm"),
        DeviceProfile("iot", 512.0, True, False, False, 1, "arm"),
    )
}
DEFAULT_PROFILE = "x86_server"


def builtin_profile(name: str) -> DeviceProfile:
    try:
        return BUILTIN_PROFILES[name]
    except KeyError:
        known = ", ".join(BUILTIN_PROFILES)
        raise ConfigError(f"device profile {name!r} is unknown; built in: {known}") from None


def detect_profile(name: str = "this_device", memory_mb: float | None = None) -> DeviceProfile:
    """This machine's profile: its architecture, CPU threads, bf16 support (AVX-512 BF16
    or AMX on x86, as torch reports it) and, unless ``memory_mb`` is given, the memory
    the OS reports available (``/proc/meminfo``; unlimited where unreadable)."""
    import torch

    machine = platform.machine().lower()
    arch: Arch = "arm" if machine.startswith(("arm", "aarch")) else "x86"
    bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    if memory_mb is None:
        memory_mb = _available_memory_mb()
    return DeviceProfile(
        name,
        memory_mb=memory_mb,
        int8="qnnpack" in torch.backends.quantized.supported_engines
        or "x86" in torch.backends.quantized.supported_engines,
        fp16=arch == "arm",
        bf16=bf16,
        threads=max(1, min(os.cpu_count() or 1, 1024)),
        arch=arch,
    )


def _available_memory_mb() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return math.inf


def with_memory(profile: DeviceProfile, memory_mb: float) -> DeviceProfile:
    """``profile`` with a device's own memory (a simulated client's jittered value)."""
    return replace(profile, memory_mb=memory_mb)
