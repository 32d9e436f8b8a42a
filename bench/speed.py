"""What unstructured and 2:4 sparsity buy on this CPU with real kernels (feeds BENCHMARKS.md).

    python bench/speed.py [--repeats 7] [--threads 1] [--json OUT]

Latency: the 7 linear layers of one decoder block (q, k, v, o, gate, up, down) for decode (1 token)
and prefill (512 tokens), dense float32 F.linear vs the same pruned weight held as torch CSR (MKL
sparse x dense) and COO. Weights are random (seeded) and pruned per output row by magnitude, as
Wanda compares within a row; only the pattern matters to the kernels. 2:4 keeps the 2 largest of
every 4 consecutive inputs. Each repeat runs every format once, in rotating order, so dense and
sparse see the same machine load; the table gives medians.

Memory: one block's 7 weights, saved with safetensors, dense (fp32, bf16) vs compressed-tensors'
sparse-bitmask (and sparse-24-bitmask for 2:4) layout, the format llm-compressor writes and vLLM
reads. compressed-tensors dropped those legacy compressors after 0.14; with a newer version the
layout is rebuilt here from the package's own pack_bitmasks and the table says so.
"""
import argparse
import json
import os
import statistics
import sys
import time
import warnings

import numpy
import torch
import torch.nn.functional as F
from safetensors.torch import save

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def _block(hidden, inter, q_out, kv_out):
    return {"q_proj": (q_out, hidden), "k_proj": (kv_out, hidden), "v_proj": (kv_out, hidden),
            "o_proj": (hidden, q_out), "gate_proj": (inter, hidden), "up_proj": (inter, hidden),
            "down_proj": (hidden, inter)}


SHAPES = {"smollm2-135m": _block(576, 1536, 9 * 64, 3 * 64),
          "qwen2.5-0.5b": _block(896, 4864, 14 * 64, 2 * 64)}
SPARSITIES = ["50%", "60%", "70%", "80%", "2:4"]
TOKENS = {"decode": 1, "prefill": 512}
SLOW_REPEATS = 3  # COO prefill takes seconds per block; more repeats would not change the verdict
# A ~1 ms decode pass fits inside one scheduler slice, so on a shared CPU a single preemption can
# multiply one sample; short passes are therefore sampled as the median of up to 5 back-to-back calls.
SHORT_S, MAX_INNER = 0.01, 5


def prune(w: torch.Tensor, sparsity: str) -> torch.Tensor:
    if sparsity == "2:4":
        groups = w.reshape(-1, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, groups.abs().topk(2, dim=1).indices, True)
        return (groups * keep).reshape(w.shape)
    k = int(w.shape[1] * float(sparsity.rstrip("%")) / 100)  # weights zeroed per row
    drop = w.abs().argsort(dim=1)[:, :k]
    return w.scatter(1, drop, 0.0)


# y = x W^T. The sparse weight is the left operand (W @ x^T), the layout torch's CSR/COO x dense
# kernels take; x^T is made contiguous inside the timed call (a strided x^T is slower) and the
# result is returned as a transposed view, so the sparse path is not charged for a copy of y.
FORMATS = {
    "dense": (lambda w: w, lambda w, x: F.linear(x, w)),
    "csr": (lambda w: w.to_sparse_csr(), lambda w, x: torch.sparse.mm(w, x.t().contiguous()).t()),
    "coo": (lambda w: w.to_sparse().coalesce(), lambda w, x: torch.sparse.mm(w, x.t().contiguous()).t()),
}


def sparse_bytes_in_ram(w):
    """Bytes the CSR operand occupies (values + int64 column indices + int64 row pointers)."""
    return sum(t.numel() * t.element_size() for t in (w.values(), w.col_indices(), w.crow_indices()))


def semi_structured_status():
    """2:4 semi-structured tensors are the only structured-sparse fp kernel in torch; try on CPU."""
    try:
        from torch.sparse import to_sparse_semi_structured
        w = prune(torch.randn(64, 64), "2:4")
        to_sparse_semi_structured(w)
        return "to_sparse_semi_structured accepted a CPU tensor (not benchmarked)"
    except Exception as e:  # noqa: BLE001 -- report whatever torch says
        return f"to_sparse_semi_structured on CPU: {type(e).__name__}: {str(e).splitlines()[0].rstrip('.')}"


def time_block(weights, inputs, apply, inner=1):
    samples = []
    for _ in range(inner):
        start = time.perf_counter()
        for w in weights.values():
            apply(w, inputs[w.shape[1]])
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench_latency(model, shapes, sparsity, repeats, gen):
    dense = {n: torch.randn(s, generator=gen) * 0.02 for n, s in shapes.items()}
    pruned = {n: prune(w, sparsity) for n, w in dense.items()}
    held = {f: {n: prep(w) for n, w in pruned.items()} for f, (prep, _) in FORMATS.items()}
    rows = []
    for mode, tokens in TOKENS.items():
        inputs = {d: torch.randn(tokens, d, generator=gen) for d in {s[1] for s in shapes.values()}}
        inner = {}
        for f, (_, apply) in FORMATS.items():  # warm-up, and check every format computes the same y
            for n, w in held[f].items():
                y = apply(w, inputs[w.shape[1]])
                ref = F.linear(inputs[w.shape[1]], pruned[n])
                assert torch.allclose(y, ref, atol=1e-4, rtol=1e-3), (model, sparsity, f, n)
            once = time_block(held[f], inputs, apply)
            inner[f] = max(1, min(MAX_INNER, int(SHORT_S / once)))
        times = {f: [] for f in FORMATS}
        order = list(FORMATS)
        for r in range(repeats):
            for f in order[r % len(order):] + order[:r % len(order)]:
                if f == "coo" and mode == "prefill" and len(times[f]) >= SLOW_REPEATS:
                    continue
                times[f].append(time_block(held[f], inputs, FORMATS[f][1], inner[f]))
        med = {f: statistics.median(t) * 1e3 for f, t in times.items()}
        # the table's speed-up is the ratio of the medians it prints; the JSON also keeps the median of
        # per-repeat ratios (dense and sparse under the same load): where the two disagree, it is noise
        sparse = [f for f in FORMATS if f != "dense"]
        rows.append({"model": model, "sparsity": sparsity, "mode": mode, "tokens": tokens, "ms": med,
                     "n": {f: len(t) for f, t in times.items()}, "inner": inner,
                     "speedup": {f: med["dense"] / med[f] for f in sparse},
                     "speedup_paired": {f: statistics.median(d / s for d, s in zip(times["dense"], times[f]))
                                        for f in sparse}})
    density = sum(int((w != 0).sum()) for w in pruned.values()) / sum(w.numel() for w in pruned.values())
    csr_bytes = sum(sparse_bytes_in_ram(w) for w in held["csr"].values())
    return rows, pruned, density, csr_bytes


def compress(state, sparsity):
    """Compressed-tensors state dict of one block, and a label saying how it was produced."""
    fmt = "sparse-24-bitmask" if sparsity == "2:4" else "sparse-bitmask"
    try:  # the real compressor, compressed-tensors <= 0.14
        import compressed_tensors
        from compressed_tensors.compressors import BaseCompressor
        from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig
        version = compressed_tensors.__version__
        config = Sparse24BitMaskConfig() if sparsity == "2:4" else BitmaskConfig()
        out = BaseCompressor.load_from_registry(fmt, config=config).compress(state)
        return out, fmt, f"compressed-tensors {version} {fmt} compressor"
    except KeyError:  # removed in 0.15+: same tensors as the 0.14 compressor, with its bit packer
        from compressed_tensors.utils import pack_bitmasks as pack
        how = f"rebuilt with compressed-tensors {version} pack_bitmasks (0.14 layout)"
    except ImportError:  # pack_bitmasks is exactly this numpy call
        def pack(mask):
            return torch.from_numpy(numpy.packbits(mask.numpy(), axis=-1, bitorder="little"))
        how = "computed by hand, compressed-tensors not installed (0.14 layout)"
    out = {}
    for name, w in state.items():
        mask, prefix = w != 0, name.removesuffix(".weight")
        out[f"{prefix}.bitmask"] = pack(mask)  # 1 bit per element, rows x ceil(in/8) bytes
        if fmt == "sparse-24-bitmask":  # exactly half the values per row: no offsets needed
            out[f"{prefix}.shape"] = torch.tensor(list(w.shape)).reshape(-1, 1)
            out[f"{prefix}.compressed"] = w[mask].reshape(w.shape[0], w.shape[1] // 2)
        else:
            counts = mask.sum(dim=-1)
            out[f"{prefix}.shape"] = torch.tensor(list(w.shape))
            out[f"{prefix}.compressed"] = w[mask]
            out[f"{prefix}.row_offsets"] = torch.cumsum(counts, 0) - counts
    return out, fmt, how


def saved_bytes(state):
    return len(save({k: v.contiguous() for k, v in state.items()}))


def memory_row(model, sparsity, pruned):
    state = {f"{n}.weight": w for n, w in pruned.items()}
    row = {"model": model, "sparsity": sparsity,
           "dense_fp32": saved_bytes(state),
           "dense_bf16": saved_bytes({k: v.bfloat16() for k, v in state.items()})}
    for dtype, key in ((torch.float32, "sparse_fp32"), (torch.bfloat16, "sparse_bf16")):
        out, fmt, how = compress({k: v.to(dtype) for k, v in state.items()}, sparsity)
        row[key] = saved_bytes(out)
    row["format"], row["how"] = fmt, how
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--sparsities", nargs="+", default=SPARSITIES, help="e.g. 50%% 90%% 2:4")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    load_start = os.getloadavg()[0]

    latency, memory = [], []
    for model in args.models:
        for sparsity in args.sparsities:
            rows, pruned, density, csr_bytes = bench_latency(
                model, SHAPES[model], sparsity, args.repeats, gen)
            latency += rows
            mem = memory_row(model, sparsity, pruned)
            mem["density"], mem["csr_ram_fp32"] = density, csr_bytes
            memory.append(mem)
            print(f"  done {model} {sparsity}", file=sys.stderr, flush=True)

    # the CPU may be shared: the load average says how much the medians had to fight for it
    info = {"load_avg_1m_start": load_start, "load_avg_1m_end": os.getloadavg()[0],
            "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
            "coo_prefill_repeats": min(args.repeats, SLOW_REPEATS),
            "mkl": torch.backends.mkl.is_available(), "semi_structured": semi_structured_status()}
    print(f"torch {info['torch']}, {info['threads']} thread(s), MKL {info['mkl']}; median of "
          f"{args.repeats} interleaved repeats ({info['coo_prefill_repeats']} for COO prefill); "
          "ms per decoder block (7 linears), float32; speed-up = dense median / sparse median; passes "
          "under 10 ms are sampled as the median of up to 5 back-to-back calls; "
          f"{os.cpu_count()} CPUs, 1-min load average {load_start:.1f} at start, "
          f"{info['load_avg_1m_end']:.1f} at end.\n")
    print("| model | sparsity | mode | dense ms | CSR ms | CSR speed-up | COO ms | COO speed-up |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in latency:
        ms, su = r["ms"], r["speedup"]
        print(f"| {r['model']} | {r['sparsity']} | {r['mode']} ({r['tokens']} tok) | {ms['dense']:.3f} | "
              f"{ms['csr']:.3f} | {su['csr']:.2f}x | {ms['coo']:.3f} | {su['coo']:.2f}x |")
    print(f"\nOther sparse kernels: {info['semi_structured']}.\n")

    print(f"Saved size of one block's 7 weights (safetensors bytes, MB = 1e6 B); {memory[0]['how']}; "
          "CSR in RAM = values + int64 indices as held for the timings above.\n")
    print("| model | sparsity | format | dense fp32 MB | dense bf16 MB | bitmask fp32 MB | bitmask bf16 MB "
          "| bitmask bf16 / dense bf16 | CSR in RAM fp32 MB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for m in memory:
        print(f"| {m['model']} | {m['sparsity']} | {m['format']} | {m['dense_fp32'] / 1e6:.2f} | "
              f"{m['dense_bf16'] / 1e6:.2f} | {m['sparse_fp32'] / 1e6:.2f} | {m['sparse_bf16'] / 1e6:.2f} | "
              f"{m['sparse_bf16'] / m['dense_bf16']:.2f} | {m['csr_ram_fp32'] / 1e6:.2f} |")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "latency": latency, "memory": memory}, fh, indent=1)


if __name__ == "__main__":
    main()
