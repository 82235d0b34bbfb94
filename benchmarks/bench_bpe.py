"""BPE training: ours (``tokenizer.train_bpe``) vs Hugging Face ``tokenizers`` and ``rustbpe`` (both
Rust), same run.

    python -m benchmarks.bench_bpe [--repeat 3] [--mb 50] [--workers N] [--only NAME]

Cases: vocab 10000 on tinyshakespeare.txt, on a 50 MB Markov corpus (``benchmarks.markov_corpus``: low
diversity, ~26K distinct pre-tokens) and on a 50 MB long-tailed corpus (``benchmarks.diverse_corpus``:
~730K distinct pre-tokens); vocab 500 on corpus.en. ``rustbpe`` (nanochat's trainer, a dev extra; left
out with a note where it is not installed) gets the documents of the file split at ``<|endoftext|>``,
GPT-2's pattern and the same number of merges. HF is configured alike: a ByteLevel BPE whose
pre-tokenizer is GPT-2's regex, every byte in the initial alphabet, ``<|endoftext|>`` a special token
that its pre-tokenizer cuts out first (HF 0.23 otherwise learns merges from the special token's text,
even when it is registered).

Each training runs in a fresh Python process; the wall time is measured inside it around the training
call only (no interpreter start-up or imports). Peak memory is the largest summed RSS of that process
and all its descendants (our workers), sampled every 5 ms with psutil, so both sides are measured the
same way; the kernel's peak for each main process (VmHWM) is printed as a check. The best of
``--repeat`` runs is shown, ours and HF's runs alternating. The first 1000 merges are compared
(tie-breaking differs, and HF's ``train(files)`` feeds the file line by line, so it never sees a white
space run that spans lines, such as ``"\\n\\n"``). ``--workers`` sets our processes; HF uses all cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.diverse_corpus import diverse_corpus_path
from benchmarks.markov_corpus import SOURCE_DIR, markov_corpus_path
from tokenizer.io import bytes_to_unicode

EOT = "<|endoftext|>"

# The kernel's peak RSS of the process itself: VmHWM, which exec resets. (ru_maxrss is no good here: on
# Linux it keeps the peak of the process that forked us, e.g. a large pytest process.)
PEAK_KB = """
def peak_kb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

OURS = (
    PEAK_KB
    + """
import json, sys, time
from tokenizer.bpe import train_bpe
path, vocab_size, workers, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
start = time.perf_counter()
vocab, merges = train_bpe(path, vocab_size, ["<|endoftext|>"], num_workers=int(workers) if workers else None)
seconds = time.perf_counter() - start
merges = [[a.hex(), b.hex()] for a, b in merges]
json.dump({"seconds": seconds, "merges": merges, "vocab": len(vocab), "peak_kb": peak_kb()}, open(out, "w"))
"""
)

HF = (
    PEAK_KB
    + """
import json, sys, time
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
path, vocab_size, workers, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
gpt2 = r"'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
start = time.perf_counter()
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split("<|endoftext|>", behavior="removed"),  # else HF trains on the special's text
    pre_tokenizers.Split(Regex(gpt2), behavior="isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
])
trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train([path], trainer)
seconds = time.perf_counter() - start
merges = [m.split(" ") if isinstance(m, str) else m for m in json.loads(tok.to_str())["model"]["merges"]]
json.dump({"seconds": seconds, "merges": merges, "vocab": tok.get_vocab_size(), "peak_kb": peak_kb()},
          open(out, "w"))
"""
)


RUSTBPE = (
    PEAK_KB
    + """
import json, sys, time
import rustbpe
path, vocab_size, workers, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
gpt2 = r"'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
start = time.perf_counter()
with open(path, encoding="utf-8") as f:
    documents = f.read().split("<|endoftext|>")
tok = rustbpe.Tokenizer()
tok.train_from_iterator(iter(documents), vocab_size - 1, pattern=gpt2)  # 256 bytes + merges, no special
seconds = time.perf_counter() - start
report = {"seconds": seconds, "merges": [], "vocab": tok.vocab_size + 1, "peak_kb": peak_kb()}
json.dump(report, open(out, "w"))
"""
)


def have_rustbpe() -> bool:
    try:
        import rustbpe  # noqa: F401
    except ImportError:
        return False
    return True


def tree_rss(proc: psutil.Process) -> int:
    """Summed RSS of a process and its descendants (0 for any that vanished meanwhile)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # it may have exited meanwhile
            total += p.memory_info().rss
    return total


def run(script: str, path: Path, vocab_size: int, workers: int | None) -> dict:
    """Run one training in a fresh interpreter; return its report plus the sampled peak tree RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = [sys.executable, "-c", script, str(path), str(vocab_size), str(workers or ""), str(out)]
        child = subprocess.Popen(args, cwd=Path(__file__).resolve().parent.parent)
        proc, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, tree_rss(proc))
            time.sleep(0.005)
        if child.returncode != 0:
            raise RuntimeError(f"training subprocess failed with exit code {child.returncode}")
        result = json.loads(out.read_text())
    result["peak_tree_mb"] = max(peak, result["peak_kb"] * 1024) / 2**20  # sampling may miss a last peak
    return result


def bench(name: str, path: Path, vocab_size: int, repeat: int, workers: int | None) -> None:
    use_rust = have_rustbpe()
    ours, hf, rust = [], [], []
    for _ in range(repeat):  # interleaved, so that a burst of load elsewhere hits all alike
        ours.append(run(OURS, path, vocab_size, workers))
        hf.append(run(HF, path, vocab_size, workers))
        if use_rust:
            rust.append(run(RUSTBPE, path, vocab_size, workers))
    t_ours, t_hf = min(r["seconds"] for r in ours), min(r["seconds"] for r in hf)
    m_ours, m_hf = min(r["peak_tree_mb"] for r in ours), min(r["peak_tree_mb"] for r in hf)
    to_byte = {c: b for b, c in bytes_to_unicode().items()}  # HF writes merges in GPT-2's alphabet
    merges_hf = [[bytes(to_byte[c] for c in part).hex() for part in pair] for pair in hf[0]["merges"][:1000]]
    merges_ours = ours[0]["merges"][:1000]
    same_place = sum(a == b for a, b in zip(merges_ours, merges_hf, strict=False))
    same_set = len({tuple(m) for m in merges_ours} & {tuple(m) for m in merges_hf})
    print(f"\n{name}: vocab {vocab_size}, {path.stat().st_size / 1e6:.1f} MB, best of {repeat}")
    print(f"  wall time   ours {t_ours:7.3f} s   HF {t_hf:7.3f} s   ours/HF {t_ours / t_hf:5.2f}x")
    hwm_ours, hwm_hf = ours[0]["peak_kb"] / 1024, hf[0]["peak_kb"] / 1024
    print(
        f"  peak RSS    ours {m_ours:7.1f} MB  HF {m_hf:7.1f} MB  ours/HF {m_ours / m_hf:5.2f}x"
        f"   (VmHWM of the main process: ours {hwm_ours:.1f} MB, HF {hwm_hf:.1f} MB)"
    )
    if use_rust:
        t_rust, m_rust = min(r["seconds"] for r in rust), min(r["peak_tree_mb"] for r in rust)
        print(
            f"  rustbpe     {t_rust:7.3f} s, peak RSS {m_rust:7.1f} MB   ours/rustbpe {t_ours / t_rust:5.2f}x"
            "   (its time includes reading the file; its vocab "
            f"{rust[0]['vocab']} with a slot for the special token)"
        )
    else:
        print("  rustbpe     not installed (pip install rustbpe, or the dev extra): left out")
    times = ", ".join(f"{r['seconds']:.3f}" for r in ours)
    spread = statistics.pstdev([r["seconds"] for r in ours]) if repeat > 1 else 0.0
    print(f"  our times   {times} s (stdev {spread:.3f})")
    print(
        f"  vocab       ours {ours[0]['vocab']}  HF {hf[0]['vocab']};  first 1000 merges: "
        f"{same_place} identical at the same rank, {same_set} in common"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is shown")
    parser.add_argument(
        "--mb", type=float, default=50, help="size of the Markov and long-tailed corpora in MB"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="our processes (default: all cores)"
    )  # HF: all
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cases = [
        ("corpus.en", SOURCE_DIR / "corpus.en", 500),
        ("tinyshakespeare.txt", SOURCE_DIR / "tinyshakespeare.txt", 10000),
        (f"Markov {args.mb:g} MB (low diversity)", markov_corpus_path(args.mb), 10000),
        (f"long-tailed {args.mb:g} MB (high diversity)", diverse_corpus_path(args.mb), 10000),
    ]
    for name, path, vocab_size in cases:
        if args.only is not None and args.only not in name:
            continue
        bench(name, path, vocab_size, args.repeat, args.workers)
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
