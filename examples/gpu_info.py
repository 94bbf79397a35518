"""A GPU job that prints what it sees: its GPUs, the CPUs it is bound to, torch's view.

Submit it with GPUs, e.g.:

    hpcbatch submit --gpus 2 -- python3 examples/gpu_info.py

Each line is ``key=value`` so a script (or a test) can read it:

    cuda_visible_devices=0,1            # indices as the job sees them
    nvidia_visible_devices=GPU-...,...  # the UUIDs (what a container runtime would be given)
    cpu_affinity=0-3                    # CPUs the job may run on (its GPUs' NUMA node, when known)
    torch_cuda_available=False          # torch present: what CUDA says, else "no torch"
    torch_cuda_device_count=0
    torch_cuda_device.0=NVIDIA H100 80GB HBM3   # one line per device torch sees
"""

from __future__ import annotations

import os


def fold(cpus: set[int]) -> str:
    """{0,1,2,3,8} -> "0-3,8" (the cpulist notation of sysfs and taskset)."""
    if not cpus:
        return ""
    runs: list[str] = []
    ordered = sorted(cpus)
    start = prev = ordered[0]
    for cpu in ordered[1:] + [-2]:
        if cpu != prev + 1:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = cpu
        prev = cpu
    return ",".join(runs)


def main() -> None:
    print(f"hostname={os.uname().nodename}")
    print(f"cuda_visible_devices={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")
    print(f"nvidia_visible_devices={os.environ.get('NVIDIA_VISIBLE_DEVICES', '(unset)')}")
    print(f"cpu_affinity={fold(os.sched_getaffinity(0))}")
    try:
        import torch
    except ImportError:
        print("torch_cuda_available=no torch")
        return
    available = torch.cuda.is_available()
    print(f"torch_cuda_available={available}")
    count = torch.cuda.device_count() if available else 0
    print(f"torch_cuda_device_count={count}")
    for i in range(count):
        print(f"torch_cuda_device.{i}={torch.cuda.get_device_name(i)}")


if __name__ == "__main__":
    main()
