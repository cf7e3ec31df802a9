"""Closed-form Rényi-2 entropy + log_prob vs a Monte-Carlo entropy estimate, in one run.

    python benchmarks/bench_student.py [--prompts 10000] [--components 10] [--dim 32]

Times, for the same fitted student and the same prompts: (a) ``entropy`` + ``log_prob`` of one
candidate per prompt (closed form, one forward pass) and (b) a 1,000-sample Monte-Carlo
estimate ``-log mean_s p(y_s)`` of the same mixtures' Rényi-2 entropy. Prints both and the ratio.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from semdistill import SSDStudent


def monte_carlo_renyi2(student: SSDStudent, H: np.ndarray, n_draws: int, chunk: int) -> np.ndarray:
    """``-log (1/S) Σ_s p(y_s)`` with ``y_s ~ p``, in chunks of prompts to bound memory."""
    out = []
    for start in range(0, len(H), chunk):
        mixture = student.distribution(H[start : start + chunk])
        with torch.no_grad():
            log_density = mixture.log_prob(mixture.sample((n_draws,)))
        out.append(-(torch.logsumexp(log_density, dim=0) - math.log(n_draws)))
    return torch.cat(out).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=1536, help="prompt representation width")
    parser.add_argument("--draws", type=int, default=1000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    H_train = rng.normal(size=(256, args.hidden)).astype(np.float32)
    Y_train = rng.normal(size=(256, 4, args.dim)).astype(np.float32)
    student = SSDStudent(n_components=args.components, max_epochs=2, verbose=False)
    student.fit(H_train, Y_train)
    H = rng.normal(size=(args.prompts, args.hidden)).astype(np.float32)
    y = rng.normal(size=(args.prompts, args.dim)).astype(np.float32)

    student.renyi2_entropy(H[:64])  # warm-up
    start = time.perf_counter()
    closed = student.renyi2_entropy(H)
    student.log_prob(H, y)
    closed_s = time.perf_counter() - start

    start = time.perf_counter()
    estimate = monte_carlo_renyi2(student, H, args.draws, chunk=500)
    mc_s = time.perf_counter() - start

    gap = np.abs(closed - estimate)
    print(
        f"prompts={args.prompts} K={args.components} d={args.dim} h={args.hidden} "
        f"torch threads={torch.get_num_threads()}"
    )
    print(f"closed form (entropy + log_prob): {closed_s:8.3f} s")
    print(f"Monte Carlo entropy ({args.draws} draws): {mc_s:8.3f} s")
    print(f"median |closed - MC| = {np.median(gap):.4f} nats")
    print(f"speed-up: {mc_s / closed_s:.1f}x")


if __name__ == "__main__":
    main()
