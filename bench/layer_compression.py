"""Which compression should the weights layer use? Measured, in one run.

    .venv/bin/python bench/layer_compression.py [--mib 256] [--ingest-mibs 190]

Two samples: fp16 values drawn like trained weights (normal, std 0.02; their exponent bits are
the only redundancy real checkpoints have) and random bytes. For each of none, gzip:1, gzip:6,
zstd:1, zstd:3 it measures compression and decompression speed on one core and the size ratio,
then estimates, for a 2 GiB fine-tune, the push time (compression overlapped with sending:
max(compress, size / link)) and the pull's decompression time, on links of this machine's local
registry ingest rate (``--ingest-mibs``, from bench/build_speed.py), 1 Gbit/s and 100 Mbit/s.
Ratios are against ``none``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.oci.layer import Compression  # noqa: E402

CHOICES = ["none", "gzip:1", "gzip:6", "zstd:1", "zstd:3"]
FINE_TUNE = 2 * 2**30


def sample(kind: str, size: int) -> bytes:
    if kind == "random bytes":
        return os.urandom(size)
    rng = np.random.default_rng(0)
    return (rng.standard_normal(size // 2, dtype=np.float32) * 0.02).astype(np.float16).tobytes()


def measure(data: bytes, choice: str) -> tuple[float, float, float]:
    """(compress MiB/s, decompress MiB/s, compressed/original)."""
    compression = Compression.parse(choice)
    compressor = compression.compressor()
    if compressor is None:
        return float("inf"), float("inf"), 1.0
    started = time.perf_counter()
    parts = [compressor.compress(data[i : i + 8 * 2**20]) for i in range(0, len(data), 8 * 2**20)]
    parts.append(compressor.flush())
    compress_s = time.perf_counter() - started
    blob = b"".join(parts)
    started = time.perf_counter()
    if compression.algorithm == "gzip":
        zlib.decompress(blob, 31)
    else:
        import zstandard

        zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    decompress_s = time.perf_counter() - started
    mib = len(data) / 2**20
    return mib / compress_s, mib / decompress_s, len(blob) / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="sample size")
    parser.add_argument("--ingest-mibs", type=float, default=190.0, help="the local registry's ingest rate, MiB/s")
    args = parser.parse_args()
    links = {"local registry": args.ingest_mibs, "1 Gbit/s": 119.2, "100 Mbit/s": 11.92}
    for kind in ("fp16 weights", "random bytes"):
        data = sample(kind, args.mib * 2**20)
        print(f"\n{kind} ({args.mib} MiB sample; push/pull times for a 2 GiB fine-tune)")
        header = f"{'compression':12} {'ratio':>6} {'comp MiB/s':>11} {'decomp MiB/s':>13}"
        header += "".join(f" {'push ' + name:>22}" for name in links) + f" {'pull decompress':>16}"
        print(header)
        rows = {choice: measure(data, choice) for choice in CHOICES}
        fine_tune_mib = FINE_TUNE / 2**20
        base = {name: fine_tune_mib / rate for name, rate in links.items()}
        for choice, (comp, decomp, ratio) in rows.items():
            line = f"{choice:12} {ratio:6.3f} {comp:11.0f} {decomp:13.0f}"
            for name, rate in links.items():
                push = max(fine_tune_mib / comp, fine_tune_mib * ratio / rate)
                line += f" {push:9.1f} s ({push / base[name]:5.2f}x)"
            line += f" {fine_tune_mib / decomp:14.1f} s"
            print(line)
    print("\nx: push time relative to no compression on that link (lower is better).")


if __name__ == "__main__":
    main()
