"""Peak memory of `semdir-edit batch` against the number of inputs: it must not grow with the folder.

    .venv/bin/python scripts/batch_memory.py [--sizes 1000 10000] [--processes 2] [--out runs/batch-memory]

Writes the first N Fashion-MNIST test images (cycled past 10,000) as PNGs, runs the CLI on each folder in a fresh
process (`--method encoder`, `global:0` at eps 2, linear) and reports the peak resident set of the run's own process
and of its largest worker (Linux rusage of the waited-for children), with the run's throughput.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2

from semdir_edit.config import DataConfig
from semdir_edit.data.datasets import load_split

MEASURE = """
import resource, subprocess, sys, json, time
t0 = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": kb / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--processes", type=int, default=None, help="batch --processes (default: its own)")
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--out", default="runs/batch-memory")
    args = parser.parse_args()
    images = load_split(DataConfig(), "test").images[:, 0].numpy()
    root = Path(args.out)
    rows = []
    for n in args.sizes:
        src, dst = root / f"in-{n}", root / f"out-{n}"
        shutil.rmtree(dst, ignore_errors=True)
        src.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = src / f"img{i:05d}.png"
            if not path.exists():
                cv2.imwrite(str(path), images[i % len(images)])
        cmd = [sys.executable, "-m", "semdir_edit", "batch", str(src), str(dst), "-d", "global:0", "--eps", "2",
               "--keep", "none", "--method", "encoder", "-w", args.weights, "--device", "cpu", "--quiet"]
        if args.processes:
            cmd += ["--processes", str(args.processes)]
        # In a fresh interpreter: RUSAGE_CHILDREN is the largest of the process tree it waited for.
        out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], check=True, capture_output=True, text=True)
        figures = json.loads(out.stdout)
        row = {"inputs": n, "peak_mb": round(figures["peak_mb"], 1),
               "images_per_s": round(n / figures["seconds"], 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        shutil.rmtree(dst, ignore_errors=True)
    print("| inputs | peak resident set (largest process) | images/s (whole run, start-up included) |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['inputs']:,} | {row['peak_mb']} MB | {row['images_per_s']} |")


if __name__ == "__main__":
    main()
