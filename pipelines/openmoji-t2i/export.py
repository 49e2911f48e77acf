"""Ship the t2i pre-training run as the bundled base: ``lplkit/assets/openmoji-t2i-base/``.

    python pipelines/openmoji-t2i/export.py --run runs/openmoji-t2i-base \
        --eval pipelines/openmoji-t2i/results-base.json --command "lplkit train ..."

As pipelines/openmoji-base/export.py: ``run.json`` (the run's record with its text encoder, plus
the step), ``model.safetensors`` (the newest checkpoint's EMA weights in float16) and
``training.json`` (command, steps, wall time from metrics.jsonl, versions, the run's config and
the final metrics from ``--eval``: the JSON that pipelines/openmoji-t2i/report.py writes).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lplkit import __version__  # noqa: E402
from lplkit.train.base import export_base  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "lplkit" / "assets" / "openmoji-t2i-base")
    ap.add_argument("--eval", type=Path, action="append", default=[], help="report.py outputs")
    ap.add_argument("--command", required=True, help="the train command that made the run")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the run, if known")
    args = ap.parse_args()
    rows = [json.loads(x) for x in (args.run / "metrics.jsonl").read_text().splitlines() if x]
    import diffusers
    import transformers

    record = {
        "command": args.command,
        "steps": rows[-1]["step"],
        "images_seen": rows[-1]["images_seen"],
        "train_wall_time_s": round(sum(r["time_s"] for r in rows), 1),
        "final_loss": rows[-1]["loss"],
        "lplkit": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": args.threads,
        "config": json.loads((args.run / "config.json").read_text()),
        "final_metrics": [json.loads(p.read_text()) for p in args.eval],
        "weights": "EMA of the newest checkpoint, float16",
    }
    out = export_base(args.run, args.out, record=record)
    print(out)


if __name__ == "__main__":
    main()
