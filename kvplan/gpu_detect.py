"""Find the local GPU through pynvml (NVIDIA's management library) and match it to a preset."""

from __future__ import annotations

from dataclasses import replace

from .hardware import GPU, GPUS
from .units import InputError

_NAME_HINTS = (("h100 pcie", "h100-pcie"), ("h100", "h100-sxm"), ("h200", "h200"), ("h800", "h800"),
               ("a100-sxm4-40", "a100-40gb"), ("a100 40", "a100-40gb"), ("a100", "a100-80gb"), ("l40s", "l40s"),
               ("b200", "b200"), ("4090", "rtx-4090"))


def preset_for_name(device_name: str) -> str | None:
    lowered = device_name.lower()
    for hint, preset in _NAME_HINTS:
        if hint in lowered:
            return preset
    return None


def nvml_info(index: int = 0) -> dict:
    """Name, memory, clocks, power and driver of GPU `index`, or InputError when NVML is unavailable."""
    try:
        import pynvml
    except ImportError:
        raise InputError("--gpu auto needs pynvml (pip install 'kvplan[profile]')") from None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        info = {
            "name": name,
            "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
            "driver": (lambda v: v.decode() if isinstance(v, bytes) else v)(pynvml.nvmlSystemGetDriverVersion()),
        }
        for key, call in (("sm_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
                          ("max_sm_clock_mhz", lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)),
                          ("memory_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
                          ("power_watts", lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000),
                          ("power_limit_watts", lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000)):
            try:
                info[key] = call()
            except pynvml.NVMLError:
                info[key] = None
        return info
    except pynvml.NVMLError as error:
        raise InputError(f"no GPU found through NVML ({error})") from None


def detect_gpu(index: int = 0) -> GPU:
    info = nvml_info(index)
    preset = preset_for_name(info["name"])
    if preset is None:
        raise InputError(f"GPU {info['name']!r} matches no preset; pass --hardware-profile from `kvplan calibrate`")
    return replace(GPUS[preset], memory_bytes=info["memory_bytes"])
