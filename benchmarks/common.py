"""Shared benchmark helpers: median timing, the memory-bandwidth floor measured in the same run, machine name."""
import os
import platform
import statistics
import time

import torch


def machine_name() -> str:
    """A stable file name for this machine kind, e.g. 'cpu-amd-epyc-2t' or 'nvidia-h100-80gb-hbm3'."""
    if torch.cuda.is_available() and os.environ.get("FUSED_KINGMA_BENCH_DEVICE", "cpu") == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = "cpu-" + cpu_model() + f"-{torch.get_num_threads()}t"
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def cpu_model() -> str:
    """The CPU's model name, with its x86 family and model numbers when the name alone does not tell the
    generation (cloud VMs say just "AMD EPYC": Zen 4 and Zen 5 hosts differ 2x in AVX-512 throughput, so their
    results must not share a file)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or "unknown"
    if "cpu family" in info and "model" in info and not any(c.isdigit() for c in name):
        name += f" family {info['cpu family']} model {info['model']}"
    return name


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, *, device="cpu", warmup=3, repeat=15, min_time_s=0.0):
    """Median wall time of fn() in milliseconds (CUDA: with events). Repeats at least `repeat` times
    and until `min_time_s` has passed, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    cuda = torch.device(device).type == "cuda"
    while len(times) < repeat or time.perf_counter() - start_all < min_time_s:
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if len(times) > 10 * repeat:
            break
    return statistics.median(times)


def median_ms_interleaved(fns, *, device="cpu", warmup=2, repeat=7, calls_per_round=1):
    """Median ms of each fn in the dict `fns`, timed in round-robin order, so that a machine whose memory
    bandwidth drifts over time (shared hosts) slows every candidate alike. Each round calls every candidate
    `calls_per_round` times in a row and keeps the median of those calls: 1 times each call right after the
    other candidates (cold caches); 3 times it with its inputs warm, as in a loop calling it every step."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            calls = [median_ms(fn, device=device, warmup=0, repeat=1) for _ in range(calls_per_round)]
            times[k].append(statistics.median(calls))
    return {k: statistics.median(v) for k, v in times.items()}


def inplace_add_fn(*, device="cpu", numel=1 << 26):
    """A callable doing `x.add_(y)` on fp32 buffers (12 bytes per element) and its byte count: the
    bandwidth probe to interleave with the candidates."""
    x = torch.zeros(numel, device=device)
    y = torch.ones(numel, device=device)
    return (lambda: x.add_(y)), 12 * numel


def inplace_update_bandwidth_gbs(*, device="cpu", numel=None, tiny=False):
    """Memory bandwidth (GB/s) of the cheapest in-place update torch does, `x.add_(y)` on fp32:
    reads x and y, writes x: 12 bytes per element. Sized well beyond the caches."""
    if numel is None:
        numel = (1 << 16) if tiny else (1 << 26)
    x = torch.zeros(numel, device=device)
    y = torch.ones(numel, device=device)
    ms = median_ms(lambda: x.add_(y), device=device, repeat=5 if tiny else 15)
    return 12 * numel / (ms * 1e-3) / 1e9


def copy_bandwidth_gbs(*, device="cpu", numel=None, tiny=False):
    """Bandwidth (GB/s) of a device-to-device copy: 8 bytes per fp32 element."""
    if numel is None:
        numel = (1 << 16) if tiny else (1 << 26)
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device=device, repeat=5 if tiny else 15)
    return 8 * numel / (ms * 1e-3) / 1e9


def floor_ms(bytes_moved, bandwidth_gbs):
    return bytes_moved / (bandwidth_gbs * 1e9) * 1e3


def markdown_table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)
