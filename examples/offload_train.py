#!/usr/bin/env python3
"""offload_train.py: a PyTorch model whose parameters and Adam state live in
Strata, paged layer by layer through pins, checked bit for bit against the
same model trained in plain PyTorch memory.

The model is `layers` linear layers of width `width` (tanh between them),
trained with Adam on random data (MSE loss). Each layer's weight and bias are
one block of the tensor "params" (weight rows, then bias, padded to
4 KiB), and its Adam
moments one block each of "exp_avg" and "exp_avg_sq": three blocks per
layer, four times the host tier by default, so every step pages them through
NVMe. A step:

  forward   pin params[i] for reading, compute layer i (no autograd graph
            kept), keep only its input activation
  backward  for i from the last layer down: pin params[i], exp_avg[i],
            exp_avg_sq[i] for writing, recompute layer i with autograd
            (activation checkpointing), take the gradients, and run torch's
            own Adam (torch.optim._functional.adam) in place on the pinned
            blocks

Every view is torch.from_dlpack(pin): no copy in or out of Strata. After the
last step every parameter and moment is compared with torch.optim.Adam on an
nn.Sequential trained on the same data from the same seed.

    PYTHONPATH=build-release/python python3 examples/offload_train.py
    ... --layers 8 --width 511 --steps 2 --host_mib 16 --nvme_path /tmp/x
"""

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch.optim._functional import adam

import strata

BETAS, EPS = (0.9, 0.999), 1e-8


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--width", type=int, default=1023)
    # Debian's CPU torch multiplies with a generic BLAS (about 2 GFLOP/s
    # here): a batch of 64 would measure its matmuls, not the paging.
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host_mib", type=float, default=0,
                   help="host tier in MiB (0: a quarter of the state)")
    p.add_argument("--nvme_path", default="./strata-data")
    p.add_argument("--policy", default="default")
    args = p.parse_args()
    if min(args.layers, args.width, args.batch, args.steps) < 1:
        p.error("--layers, --width, --batch and --steps must be at least 1")
    return args


def block_elems(d):
    """fp32 elements of one layer's block: weight and bias, padded to a
    multiple of 4096 bytes (block sizes are)."""
    return -(-(d * d + d) // 1024) * 1024


def layer(x, w, b, last):
    y = F.linear(x, w, b)
    return y if last else torch.tanh(y)


def split(block, d):
    """Weight (d, d) and bias (d,) views of one layer's block."""
    flat = block.reshape(-1)
    return flat[:d * d].view(d, d), flat[d * d:d * d + d]


def reference_model(args):
    torch.manual_seed(args.seed)
    mods = []
    for i in range(args.layers):
        mods.append(torch.nn.Linear(args.width, args.width))
        if i < args.layers - 1:
            mods.append(torch.nn.Tanh())
    return torch.nn.Sequential(*mods)


def batches(args):
    gen = torch.Generator().manual_seed(args.seed + 1)
    return [(torch.randn(args.batch, args.width, generator=gen),
             torch.randn(args.batch, args.width, generator=gen))
            for _ in range(args.steps)]


def load_initial_weights(engine, params, model, d):
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for i, lin in enumerate(linears):
        with engine.pin(params, i, access="overwrite") as pin:
            w, b = split(torch.from_dlpack(pin), d)
            w.copy_(lin.weight.detach())
            b.copy_(lin.bias.detach())


def forward(engine, params, x, d, layers):
    """The input of every layer, and the output."""
    acts = [x]
    with torch.no_grad():
        for i in range(layers):
            with engine.pin(params, i) as pin:
                w, b = split(torch.from_dlpack(pin), d)
                acts.append(layer(acts[-1], w, b, i == layers - 1))
                del w, b  # views keep the block pinned: let it go now
    return acts


def backward_and_adam(engine, tensors, acts, grad, step, args):
    params, exp_avg, exp_avg_sq = tensors
    d = args.width
    for i in reversed(range(args.layers)):
        with engine.pin(params, i, access="w") as pp, \
                engine.pin(exp_avg, i, access="w") as pm, \
                engine.pin(exp_avg_sq, i, access="w") as pv:
            w, b = split(torch.from_dlpack(pp), d)
            x = acts[i].detach().requires_grad_(i > 0)
            wg, bg = w.detach().requires_grad_(), b.detach().requires_grad_()
            layer(x, wg, bg, i == args.layers - 1).backward(grad)
            grad = x.grad
            m, v = (split(torch.from_dlpack(p), d) for p in (pm, pv))
            steps = [torch.tensor(float(step - 1)) for _ in range(2)]
            with torch.no_grad():
                adam([w, b], [wg.grad, bg.grad], list(m), list(v), [], steps,
                     foreach=False, amsgrad=False, beta1=BETAS[0],
                     beta2=BETAS[1], lr=args.lr, weight_decay=0, eps=EPS,
                     maximize=False)
            del w, b, wg, bg, m, v  # views keep the blocks pinned


def train_in_strata(engine, tensors, data, args):
    nvme_mb = 0.0
    for step, (x, target) in enumerate(data, 1):
        before = engine.stats()
        start = time.perf_counter()
        with engine.step():
            acts = forward(engine, tensors[0], x, args.width, args.layers)
            out = acts.pop().requires_grad_()
            loss = F.mse_loss(out, target)
            loss.backward()
            backward_and_adam(engine, tensors, acts, out.grad, step, args)
        secs = time.perf_counter() - start
        after = engine.stats()
        read = (after["nvme"]["bytes_out"] - before["nvme"]["bytes_out"]) / 1e9
        wrote = (after["nvme"]["bytes_in"] - before["nvme"]["bytes_in"]) / 1e9
        h = after["host"]["hits"] - before["host"]["hits"]
        m = after["host"]["misses"] - before["host"]["misses"]
        nvme_mb += (read + wrote) * 1e3
        print(f"step {step}  loss {loss.item():.6e}  nvme read {read:.2f} GB "
              f"written {wrote:.2f} GB  host hit ratio {h / max(1, h + m):.3f}  "
              f"{(read + wrote) * 1e3 / secs:.0f} MB/s  ({secs:.2f} s)")
    return nvme_mb


def train_reference(model, data, args):
    """Trains in plain memory; returns the optimizer and each step's seconds
    (the compute a step costs with no paging at all)."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=BETAS,
                           eps=EPS, foreach=False)
    seconds = []
    for x, target in data:
        start = time.perf_counter()
        opt.zero_grad()
        F.mse_loss(model(x), target).backward()
        opt.step()
        seconds.append(time.perf_counter() - start)
    return opt, seconds


def compare(engine, tensors, model, opt, d):
    """How many values differ from the reference (0: bit for bit)."""
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    differ = 0
    for i, lin in enumerate(linears):
        expect = [
            (lin.weight, lin.bias),
            (opt.state[lin.weight]["exp_avg"], opt.state[lin.bias]["exp_avg"]),
            (opt.state[lin.weight]["exp_avg_sq"], opt.state[lin.bias]["exp_avg_sq"]),
        ]
        for t, (ew, eb) in zip(tensors, expect):
            with engine.pin(t, i) as pin:
                w, b = split(torch.from_dlpack(pin), d)
                differ += int((w != ew.detach()).sum()) + int((b != eb.detach()).sum())
    return differ


def main():
    args = parse_args()
    d, layers = args.width, args.layers
    block = block_elems(d) * 4
    state = 3 * layers * block
    host = args.host_mib * 2**20 or state / 4
    host = max(4 * block, int(math.ceil(host / 4096)) * 4096)
    print(f"offload_train.py: {state / 2**20:.0f} MiB of fp32 params + Adam "
          f"state in {3 * layers} blocks of {block // 1024} KiB; host tier "
          f"{host / 2**20:.0f} MiB ({state / host:.1f}x smaller); policy "
          f"{args.policy}")
    model, data = reference_model(args), batches(args)
    with strata.Engine(host_bytes=host, block_bytes=block, policy=args.policy,
                       nvme_path=args.nvme_path) as engine:
        tensors = [engine.create_tensor(n, torch.float32,
                                      (layers, block_elems(d)))
                   for n in ("params", "exp_avg", "exp_avg_sq")]
        load_initial_weights(engine, tensors[0], model, d)
        start = time.perf_counter()
        nvme_mb = train_in_strata(engine, tensors, data, args)
        secs = time.perf_counter() - start
        print(f"nvme traffic: {nvme_mb / secs:.0f} MB/s over {args.steps} "
              "steps (compute included)")
        opt, ref_seconds = train_reference(model, data, args)
        # Step 1 of the reference also allocates and first-touches the Adam
        # moments; the later steps are its compute alone.
        ref = ref_seconds[1:] or ref_seconds
        ref_step = sorted(ref)[len(ref) // 2]
        print(f"plain PyTorch in memory: {ref_step:.2f} s/step (median of "
              f"steps {args.steps - len(ref) + 1}-{args.steps}); in Strata: "
              f"{secs / args.steps:.2f} s/step, "
              f"{secs / args.steps / ref_step:.2f}x")
        differ = compare(engine, tensors, model, opt, d)
        total = 3 * layers * d * (d + 1)
        for t in tensors:
            engine.drop_tensor(t)
    if differ:
        print(f"FAIL: {differ} of {total} values differ from plain PyTorch")
        return 1
    print(f"OK: all {total} parameters and Adam moments equal plain PyTorch's "
          "(same seed), bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
