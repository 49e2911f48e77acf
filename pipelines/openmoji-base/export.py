"""Ship a pre-training run as a bundled base: ``lplkit/assets/openmoji-base/`` (or ``--out``, e.g.
``lplkit/assets/openmoji-t2i-base`` for the text-to-image base; docs/t2i-demo.md).

    python pipelines/openmoji-base/export.py --run runs/openmoji-base \
        --eval runs/openmoji-base/eval.json --command "lplkit train ..."

Writes ``run.json`` (the run's record, plus the step), ``model.safetensors`` (the newest
checkpoint's EMA weights in float16) and ``training.json`` (command, steps, wall time from
metrics.jsonl, versions, the run's config, and the final metrics from ``--eval``: the JSON of
``lplkit eval --json ... --floor ...``).
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


def _transformers_version() -> dict[str, str]:
    """{"transformers": version} when it is installed (text-to-image bases record it)."""
    try:
        import transformers
    except ImportError:
        return {}
    return {"transformers": transformers.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "lplkit" / "assets" / "openmoji-base")
    ap.add_argument("--eval", type=Path, action="append", default=[], help="eval --json outputs")
    ap.add_argument("--command", required=True, help="the train command that made the run")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    rows = [json.loads(x) for x in (args.run / "metrics.jsonl").read_text().splitlines() if x]
    import diffusers

    record = {
        "command": args.command,
        "steps": rows[-1]["step"],
        "images_seen": rows[-1]["images_seen"],
        "train_wall_time_s": round(sum(r["time_s"] for r in rows), 1),
        "final_loss": rows[-1]["loss"],
        "lplkit": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        **_transformers_version(),
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
