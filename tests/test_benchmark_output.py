"""What the benchmarks record about the machine a trajectory was run on."""

import platform
from pathlib import Path

import torch

from benchmarks.output import cpu_description, machine


def test_cpu_description_names_the_model_architecture_and_kernels():
    text = cpu_description()
    assert platform.machine() in text
    assert f"{torch.backends.cpu.get_cpu_capability()} kernels" in text
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        if names:
            assert text.startswith(names[0])


def test_machine_records_the_cpu():
    assert machine(quick=True)["cpu"] == cpu_description()
