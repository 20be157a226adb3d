"""Forward + backward time and peak memory of the splat rasteriser against Gaussian count and resolution.

    python benchmarks/bench_rasterizer.py [--device cpu|cuda] [--counts 5000 20000 80000] [--sizes 64 128 256]

Runs ``distilled_splat.rendering.rasterize`` (gsplat on CUDA, the PyTorch rasteriser elsewhere) on random
Gaussians whose footprints are a few pixels wide, as in a trained scene, with SH degree 3 and absgrad on, as
splatfacto trains. Prints the median of ``--repeats`` timed runs after one warm-up run. Peak memory is the
allocator's peak on CUDA and the peak of torch's allocations recorded by torch.profiler on CPU, both above
what was allocated before the run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from distilled_splat.rendering import rasterize


def random_gaussians(count: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(count, 3, generator=generator) * 0.8 + torch.tensor([0.0, 0.0, 4.0])
    quats = torch.randn(count, 4, generator=generator)
    scales = torch.rand(count, 3, generator=generator) * 0.02 + 0.005
    opacities = torch.rand(count, generator=generator) * 0.9 + 0.05
    sh = torch.randn(count, 16, 3, generator=generator) * 0.2
    return [t.to(device).requires_grad_(True) for t in (means, quats, scales, opacities, sh)]


def peak_memory(run: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by ``run`` above what was allocated before it.

    CUDA: the caching allocator's peak. CPU: replayed from torch.profiler's record of every allocation and
    free (sampling the process RSS misses short peaks and memory the allocator reuses).
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        run()
    allocated = peak = 0
    for event in sorted(recorded.events(), key=lambda event: event.time_range.start):
        allocated += event.self_cpu_memory_usage
        peak = max(peak, allocated)
    return peak


def time_step(count: int, size: int, device: torch.device, repeats: int) -> Tuple[float, float, int]:
    """Median forward and backward seconds and peak extra bytes of one render + backward."""
    params = random_gaussians(count, device)
    K = torch.tensor([[size * 0.9, 0.0, size / 2], [0.0, size * 0.9, size / 2], [0.0, 0.0, 1.0]], device=device)
    viewmat = torch.eye(4, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> Tuple[float, float]:
        for p in params:
            p.grad = None
        sync()
        start = time.perf_counter()
        rgb, alpha, meta = rasterize(
            *params, viewmats=viewmat[None], Ks=K[None], width=size, height=size, sh_degree=3, packed=False,
            absgrad=True, backgrounds=torch.ones(1, 3, device=device),
        )  # fmt: skip
        meta["means2d"].retain_grad()
        sync()
        middle = time.perf_counter()
        (rgb.square().mean() + alpha.mean()).backward()
        sync()
        return middle - start, time.perf_counter() - middle

    step()
    timings = [step() for _ in range(repeats)]
    memory = peak_memory(lambda: step(), device)
    return statistics.median(t[0] for t in timings), statistics.median(t[1] for t in timings), memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--counts", type=int, nargs="+", default=[5_000, 20_000, 80_000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    backend = "gsplat" if device.type == "cuda" else "PyTorch rasteriser"
    print(f"device: {name}; backend: {backend}; torch {torch.__version__}")
    print(f"{'gaussians':>10} {'size':>6} {'forward ms':>11} {'backward ms':>12} {'total ms':>9} {'peak MB':>8}")
    for count in args.counts:
        for size in args.sizes:
            forward, backward, memory = time_step(count, size, device, args.repeats)
            total = forward + backward
            print(
                f"{count:>10} {f'{size}x{size}':>6} {forward * 1e3:>11.1f} {backward * 1e3:>12.1f} "
                f"{total * 1e3:>9.1f} {memory / 2**20:>8.1f}"
            )


if __name__ == "__main__":
    main()
