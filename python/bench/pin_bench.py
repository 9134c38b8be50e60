#!/usr/bin/env python3
"""pin_bench.py: what a zero-copy view of a resident block costs from Python,
beside what torch itself costs for a view of a NumPy array of the same size
(the issue's target: pin + torch.from_dlpack + release <= 1.5x the latter).

Each workload runs --iters times per repetition, --reps repetitions; the
median repetition is printed in ns per iteration, and the ratios to the
torch.from_dlpack(numpy array) baseline measured in the same run.

    PYTHONPATH=build-release/python python3 python/bench/pin_bench.py
"""

import argparse
import statistics
import time

import numpy as np
import torch

import strata


def measure(fn, iters, reps):
    runs = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        fn(iters)
        runs.append((time.perf_counter_ns() - start) / iters)
    return statistics.median(runs)


def workloads(engine, t, arr):
    def baseline(n):  # torch's own cost: a view of a NumPy array
        for _ in range(n):
            v = torch.from_dlpack(arr)
            del v

    def pin_torch(n):  # pin, view, release (the view dies first)
        pin_ = engine.pin
        for _ in range(n):
            with pin_(t, 0) as p:
                v = torch.from_dlpack(p)
                del v

    def pin_torch_view_outlives(n):  # release first, then the last view
        pin_ = engine.pin
        for _ in range(n):
            p = pin_(t, 0)
            v = torch.from_dlpack(p)
            p.release()
            del v

    def pin_numpy(n):
        pin_ = engine.pin
        for _ in range(n):
            with pin_(t, 0) as p:
                v = p.numpy()
                del v

    held = engine.pin(t, 0)

    def view_of_held_pin(n):  # torch's cost for our capsule, pin held
        for _ in range(n):
            v = torch.from_dlpack(held)
            del v

    def pin_only(n):
        pin_ = engine.pin
        for _ in range(n):
            pin_(t, 0).release()

    return [("torch.from_dlpack(numpy array)  [baseline]", baseline),
            ("pin + torch.from_dlpack + release", pin_torch),
            ("  same, release before the view dies", pin_torch_view_outlives),
            ("pin + pin.numpy() + release", pin_numpy),
            ("torch.from_dlpack(pin), the pin held", view_of_held_pin),
            ("pin + release (no view)", pin_only)], held


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--block_kib", type=int, default=2048)
    args = p.parse_args()
    block = args.block_kib << 10
    engine = strata.Engine(tiers=("host",), host_bytes=4 * block,
                           block_bytes=block)
    t = engine.create_tensor("w", "float32", (block // 4,))
    engine.pin(t, 0, access="w").release()  # resident from here on
    arr = np.zeros(block // 4, dtype=np.float32)
    print(f"pin_bench: resident {args.block_kib} KiB float32 block, "
          f"{args.iters} iterations x {args.reps} repetitions (median); "
          f"torch {torch.__version__}, numpy {np.__version__}")
    base = None
    runs, held = workloads(engine, t, arr)
    for name, fn in runs:
        fn(1000)  # warm up
        ns = measure(fn, args.iters, args.reps)
        base = base or ns
        print(f"{name:45s} {ns:8.0f} ns   {ns / base:5.2f}x baseline")
    held.release()
    engine.close()


if __name__ == "__main__":
    main()
