"""`lplkit demo`: the paper's protocol in miniature, offline on OpenMoji.

Submodules:

- `config`: `DemoConfig` and the command's flags (torch-free: `lplkit demo --help` reads it).
- `run`: `run_demo`, the stages (encode -> stats -> train both arms -> sample -> eval -> compare).
- `t2i`: the text-to-image task's own stages (prompt sampling, adherence, the prompt picture);
  `prompt_sampling`: sample a text run for prompts; `adherence`: name families and adherence.

Names are re-exported here lazily, so importing the package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lplkit.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lplkit.demo.config import DemoConfig
    from lplkit.demo.run import ARMS, run_demo, train_config

_EXPORTS = {"DemoConfig": "config", "ARMS": "run", "run_demo": "run", "train_config": "run"}
__all__ = ["ARMS", "DemoConfig", "run_demo", "train_config"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
