"""Reference for the rlhf-bench case matmul_fp32: the same fp32 matmul through Python torch.

Usage: python scripts/bench/matmul.py --n 2048 --threads 2 [--quick]
Prints {"gflops": ..., "torch_version": ..., "threads": ...}.
"""

import argparse

import torch

from common import emit, seconds_per_call


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, required=True, help="square matrix size")
    ap.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    ap.add_argument("--quick", action="store_true", help="short measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a = torch.randn(args.n, args.n, dtype=torch.float32)
    b = torch.randn(args.n, args.n, dtype=torch.float32)
    with torch.no_grad():
        secs = seconds_per_call(lambda: torch.matmul(a, b), args.quick)
    emit({
        "gflops": 2.0 * args.n ** 3 / secs / 1e9,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    })


if __name__ == "__main__":
    main()
