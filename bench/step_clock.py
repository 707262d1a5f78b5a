"""Run one training — a diffusers example script or dreambuild's trainer — and time its steps.

    python bench/step_clock.py --steps N --warmup W --out RESULT.json -- SCRIPT.py [ARGS...]
    python bench/step_clock.py --steps N --warmup W --out RESULT.json --trainer INPUTS.json PHOTOS.zip

Both call ``accelerate.Accelerator.backward`` once per optimizer step (gradient accumulation 1),
so the clock wraps it: it starts when backward W begins and stops when backward N begins, with a
device synchronisation at those two points only (none per step, which would penalise a trainer
that avoids host syncs): N - W whole steps of forward, backward and optimizer. The peak GPU
memory is read at step N (training, not the script's final save). The result is written to
``--out`` as JSON: ``{"steps", "seconds", "steps_per_s", "peak_gib", "device"}``.

One change to the scripts' run: trackers (``--report_to``, tensorboard by default) are dropped,
as they are not part of a training step and tensorboard is not installed here.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from pathlib import Path


def install_clock(steps: int, warmup: int, out: Path) -> None:
    import accelerate
    import torch

    cuda = torch.cuda.is_available()
    state = {"calls": 0, "start": 0.0}
    backward = accelerate.Accelerator.backward

    def sync() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def timed_backward(self, loss, **kwargs):
        state["calls"] += 1
        if state["calls"] == warmup:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            state["start"] = sync()
        elif state["calls"] == steps:
            seconds = sync() - state["start"]
            measured = steps - warmup
            out.write_text(
                json.dumps(
                    {
                        "steps": measured,
                        "seconds": seconds,
                        "steps_per_s": measured / seconds,
                        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                        "device": torch.cuda.get_device_name() if cuda else "cpu",
                    }
                )
            )
        return backward(self, loss, **kwargs)

    accelerate.Accelerator.backward = timed_backward
    init = accelerate.Accelerator.__init__

    def without_trackers(self, *args, **kwargs):
        kwargs.pop("log_with", None)
        init(self, *args, **kwargs)

    accelerate.Accelerator.__init__ = without_trackers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, required=True, help="the run's max_train_steps")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the clock starts")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trainer", nargs=2, metavar=("INPUTS_JSON", "PHOTOS_ZIP"), help="run dreambuild's trainer (run_job)")
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT.py ARGS...")
    args = parser.parse_args()
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps")
    install_clock(args.steps, args.warmup, args.out)
    if args.trainer:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from trainer.job import run_job

        run_job(json.loads(Path(args.trainer[0]).read_text()), Path(args.trainer[1]))
    else:
        script = args.script[1:] if args.script[:1] == ["--"] else args.script
        sys.argv = script
        runpy.run_path(script[0], run_name="__main__")
    if not args.out.is_file():
        sys.exit(f"the run ended before step {args.steps}: no result")


if __name__ == "__main__":
    main()
