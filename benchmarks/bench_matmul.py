"""Dense matmul throughput in float32 and bfloat16 on this machine, in one run.

This is what ``--dtype auto`` decides on: bfloat16 only pays where the CPU computes it
natively (AMX, AVX-512 BF16); elsewhere torch emulates it.

    python benchmarks/bench_matmul.py [--rows 512]
"""

from __future__ import annotations

import argparse
import time

import torch

from semdistill.teacher.device import auto_dtype


def throughput(dtype: torch.dtype, rows: int, seconds: float) -> float:
    """FLOP/s of a (rows x 1536) @ (1536 x 8960) matmul, the 1.5B's MLP shape."""
    a = torch.randn(rows, 1536, dtype=dtype)
    b = torch.randn(1536, 8960, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * rows * 1536 * 8960 * count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rates = {
        name: throughput(dtype, args.rows, args.seconds)
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    for name, rate in rates.items():
        print(f"{name}: {rate / 1e9:.1f} GFLOP/s ({args.rows}x1536 @ 1536x8960)")
    print(
        f"bfloat16 / float32: {rates['bfloat16'] / rates['float32']:.3f}; "
        f"--dtype auto picks {auto_dtype(torch.device('cpu'))} here"
    )


if __name__ == "__main__":
    main()
