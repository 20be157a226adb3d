"""Forward + backward time and peak memory of the splat rasteriser's backends, timed in turn in one process.

    python benchmarks/bench_rasterizer.py --teacher outputs/demo/vanilla/.../config.yml [--sizes train 640x480]
    python benchmarks/bench_rasterizer.py [--counts 5000 20000 80000] [--sizes 64x64 128x128 256x256]
    python benchmarks/bench_rasterizer.py --device cuda

With ``--teacher`` it renders the trained Gaussians of a splat run (its final checkpoint) from its first training
camera at the training size (``train``) and at other sizes (the intrinsics scaled), which is what sets the cost of
training; without it, random Gaussians a few pixels wide. SH degree 3 and absgrad on, as splatfacto trains.

On the CPU each case is timed under every backend of ``--backends`` (``DISTILLED_SPLAT_RASTERIZER``), the
backends alternating so that drifting machine load affects all alike, and each line ends with the speed-up of
each backend over the first, and how far its image is from the first's: the largest difference and the share of
colour values more than 1e-4 apart. It also checks that two runs of each backend give bit-identical images and
gradients, and with ``--threads 1 2`` repeats everything at each torch thread count. Prints medians of
``--repeats`` runs after one warm-up; peak memory is the peak of torch's allocations (torch.profiler) above what
was allocated before the run (the CUDA allocator's peak on CUDA).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from distilled_splat.rendering import gsplat_viewmats, rasterize
from distilled_splat.rendering.backend import BACKEND_VARIABLE

Scene = Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor, int, int]  # params, viewmat [4, 4], K [3, 3], W, H


def random_scene(count: int, width: int, height: int, seed: int = 0) -> Scene:
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(count, 3, generator=generator) * 0.8 + torch.tensor([0.0, 0.0, 4.0])
    quats = torch.randn(count, 4, generator=generator)
    scales = torch.rand(count, 3, generator=generator) * 0.02 + 0.005
    opacities = torch.rand(count, generator=generator) * 0.9 + 0.05
    sh = torch.randn(count, 16, 3, generator=generator) * 0.2
    K = torch.tensor([[width * 0.9, 0.0, width / 2], [0.0, width * 0.9, height / 2], [0.0, 0.0, 1.0]])
    return [means, quats, scales, opacities, sh], torch.eye(4), K, width, height


def teacher_scene(config_path: Path, size: str) -> Scene:
    """The trained Gaussians of a splat run, seen from its first training camera at ``size`` ('train' or WxH)."""
    from distilled_splat.teachers import load_teacher

    pipeline, _ = load_teacher(config_path, torch.device("cpu"))
    model, camera = pipeline.model, pipeline.datamanager.train_dataset.cameras[0:1]
    inputs = {key: value.detach() for key, value in model.splat_inputs(None).items()}
    width, height = int(camera.width), int(camera.height)
    K = camera.get_intrinsics_matrices()[0]
    if size != "train":
        new_width, new_height = (int(v) for v in size.split("x"))
        K = K * torch.tensor([[new_width / width], [new_height / height], [1.0]])
        width, height = new_width, new_height
    params = [inputs[key] for key in ("means", "quats", "scales", "opacities", "colors")]
    return params, gsplat_viewmats(camera.camera_to_worlds)[0], K, width, height


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


class Case:
    """One scene on one device: a render + backward that reports its times and its outputs."""

    def __init__(self, scene: Scene, device: torch.device):
        params, viewmat, K, self.width, self.height = scene
        self.params = [p.to(device).requires_grad_(True) for p in params]
        self.viewmat, self.K, self.device = viewmat.to(device), K.to(device), device
        self.sh_degree = 3 if params[4].dim() == 3 else None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self) -> Tuple[float, float, List[torch.Tensor]]:
        for p in self.params:
            p.grad = None
        self.sync()
        start = time.perf_counter()
        rgb, alpha, meta = rasterize(
            *self.params, viewmats=self.viewmat[None], Ks=self.K[None], width=self.width, height=self.height,
            sh_degree=self.sh_degree, packed=False, absgrad=True, backgrounds=torch.ones(1, 3, device=self.device),
        )  # fmt: skip
        meta["means2d"].retain_grad()
        self.sync()
        middle = time.perf_counter()
        (rgb.square().mean() + alpha.mean()).backward()
        self.sync()
        outputs = [rgb.detach(), alpha.detach(), meta["means2d"].grad, meta["means2d"].absgrad]
        return middle - start, time.perf_counter() - middle, outputs + [p.grad for p in self.params]


def measure(case: Case, backends: List[str], repeats: int) -> Dict[str, Dict[str, float]]:
    """Median forward/backward seconds, peak bytes and bit-identity of two runs, per backend, timed in turn."""
    results: Dict[str, Dict[str, float]] = {}
    timings: Dict[str, List[Tuple[float, float]]] = {name: [] for name in backends}
    first_outputs: Dict[str, List[torch.Tensor]] = {}
    for round_number in range(repeats + 1):  # round 0 warms up (and builds the C++ kernel if needed)
        for name in backends:
            os.environ[BACKEND_VARIABLE] = name
            forward, backward, outputs = case.step()
            if round_number == 0:
                first_outputs[name] = outputs
            else:
                timings[name].append((forward, backward))
                if round_number == 1:
                    same = all(torch.equal(a, b) for a, b in zip(first_outputs[name], outputs))
                    results[name] = {"deterministic": float(same)}
    for name in backends:
        os.environ[BACKEND_VARIABLE] = name
        results[name]["forward"] = statistics.median(t[0] for t in timings[name])
        results[name]["backward"] = statistics.median(t[1] for t in timings[name])
        results[name]["peak"] = peak_memory(lambda: case.step(), case.device)
    reference = first_outputs[backends[0]]
    for name in backends[1:]:
        error = (first_outputs[name][0] - reference[0]).abs()
        results[name]["image_error"] = error.max().item()
        results[name]["pixels_over"] = (error > 1e-4).float().mean().item()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teacher", type=Path, help="config.yml of a trained splat run: render its Gaussians")
    parser.add_argument("--counts", type=int, nargs="+", default=[5_000, 20_000, 80_000], help="random Gaussians")
    parser.add_argument("--sizes", nargs="+", default=None, help="WxH, or 'train' with --teacher")
    parser.add_argument("--backends", nargs="+", default=["torch", "cpp"], help="CPU backends, the first the base")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    backends = ["gsplat"] if device.type == "cuda" else args.backends
    sizes = args.sizes or (["train", "640x480"] if args.teacher else ["64x64", "128x128", "256x256"])
    scenes = []
    for size in sizes:
        if args.teacher:
            scenes.append((f"teacher {size}", teacher_scene(args.teacher, size)))
        else:
            width, height = (int(v) for v in size.split("x"))
            scenes += [(f"random {count} {size}", random_scene(count, width, height)) for count in args.counts]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; backends: {', '.join(backends)} (speed-up against the first)")
    header = f"{'case':>26} {'threads':>7} {'backend':>7} {'gaussians':>9} {'size':>9} {'fwd ms':>8} {'bwd ms':>8}"
    print(
        header
        + f" {'total ms':>9} {'peak MB':>8} {'same twice':>10} {'speed-up':>8} {'max |image diff| (share > 1e-4)':>32}"
    )
    for label, scene in scenes:
        for threads in args.threads:
            torch.set_num_threads(threads)
            results = measure(Case(scene, device), backends, args.repeats)
            base = results[backends[0]]["forward"] + results[backends[0]]["backward"]
            for backend, r in results.items():
                total = r["forward"] + r["backward"]
                error = f"{r['image_error']:.1e} ({r['pixels_over']:.1e})" if "image_error" in r else ""
                print(
                    f"{label:>26} {threads:>7} {backend:>7} {len(scene[0][0]):>9} {f'{scene[3]}x{scene[4]}':>9} "
                    f"{r['forward'] * 1e3:>8.1f} {r['backward'] * 1e3:>8.1f} {total * 1e3:>9.1f} "
                    f"{r['peak'] / 2**20:>8.1f} {'yes' if r['deterministic'] else 'NO':>10} {base / total:>8.2f} "
                    f"{error:>32}"
                )


if __name__ == "__main__":
    main()
