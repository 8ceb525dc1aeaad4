"""Memory of a default merge, step by step: RSS sampled every 50 ms through one standalone default
merge (collect, solve, apply with its repairs) of two random-init BERT classifiers, labelled by phase
and by the repair step (each group of maps corrected, each layer advanced), highest first.

    python benchmarks/speed/memory_timeline.py --size base --samples 1000

Peak RSS is what the issue's memory goal counts; the labels say which step sets it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import datasets
from transformers.utils import logging as tf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, SHAPES, write_results  # noqa: E402
from whole_merge import save_parents, texts_of  # noqa: E402

from hf_mudsc import MuDSCMerger  # noqa: E402
from hf_mudsc.repair.context import LayerInputs  # noqa: E402

walk = importlib.import_module("hf_mudsc.repair.walk")  # the module (the package exports its function walk)

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_gib() -> float:
    """This process's resident memory now (not its high-water mark)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE / 2**30


class Timeline:
    """Samples RSS in a thread; ``label`` names what runs now."""

    def __init__(self) -> None:
        self.label, self.peaks = "start", {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            now = rss_gib()
            self.peaks[self.label] = max(self.peaks.get(self.label, 0.0), now)
            time.sleep(0.05)

    def labelled(self, owner: object, name: str, label_of) -> None:
        """Wrap ``owner.name`` so that its calls run under ``label_of(*args)``."""
        inner = getattr(owner, name)

        def wrapped(*args, **kwargs):
            before, self.label = self.label, label_of(*args)
            try:
                return inner(*args, **kwargs)
            finally:
                self.label = before
        setattr(owner, name, wrapped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SHAPES), default="base")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet/data.noun"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    tf_logging.disable_progress_bar()
    timeline = Timeline()
    timeline.labelled(walk, "_correct", lambda ctx, model, group, *_: "correct " + group[0].split(".", 3)[-1])
    timeline.labelled(LayerInputs, "advance",
                      lambda runner, *_: "advance " + ("merged" if runner.reuse else "parent"))
    with tempfile.TemporaryDirectory(prefix="memory_timeline_") as tmp:
        save_parents(args.size, Path(tmp))
        marks = {}

        def mark(name: str) -> None:
            timeline.label, marks[name] = name, round(rss_gib(), 2)
            print(f"{name:<10} RSS {marks[name]:.2f} GiB", flush=True)

        merger = MuDSCMerger.from_pretrained([str(Path(tmp, f"parent_{i}")) for i in (0, 1)], "mudsc")
        texts = texts_of(merger.parents[0].processor, args.samples, args.wordnet)
        mark("collect")
        merger.collect(datasets.Dataset.from_dict({"text": texts}), num_samples=args.samples, progress=False)
        mark("solve")
        transforms, report = merger.solve(progress=False)
        mark("apply")
        merger.apply(transforms, merger.config, report)
        mark("done")
    peaks = {k: round(v, 2) for k, v in sorted(timeline.peaks.items(), key=lambda kv: -kv[1])}
    print("peak RSS by step (GiB):", dict(list(peaks.items())[:8]))
    out = write_results(args.out or RESULTS_DIR / f"memory_timeline_bert_{args.size}_{args.samples}.json", {
        "setup": {"parents": f"bert-{args.size}, random init", "shape": SHAPES[args.size], "samples": args.samples,
                  "texts": "WordNet noun glosses", "merge": "the default (MuDSC zip + repairs), standalone"},
        "rss_at_phase_start_gib": marks, "peak_rss_by_step_gib": peaks,
    })
    print("->", out)


if __name__ == "__main__":
    main()
