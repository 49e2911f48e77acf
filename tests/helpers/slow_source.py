"""A folder source that sleeps per image, so an encode runs long enough to be killed mid-way.

Registered through the public source registry under the `slowfolder:` prefix; it has the same source id,
revision and keys as the plain folder source, so its stores are comparable with (and resumable by) an
encode of the same folder. Run as a script it is the `lplkit` CLI with this source registered::

    python tests/helpers/slow_source.py encode --dataset slowfolder:DIR ...

`LPLKIT_SLOW_SOURCE_S` sets the sleep per image (default 0.05 s).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lplkit.data import register_source
from lplkit.data.folder import ImageFolderSource
from lplkit.data.sources import Record

SCRIPT = Path(__file__).resolve()


@register_source
class SlowFolder(ImageFolderSource):
    """`ImageFolderSource` that sleeps `LPLKIT_SLOW_SOURCE_S` seconds per image read."""

    prefix = "slowfolder"

    @classmethod
    def matches(cls, spec: str) -> bool:
        return False

    def __getitem__(self, i: int) -> Record:
        time.sleep(float(os.environ.get("LPLKIT_SLOW_SOURCE_S", "0.05")))
        return super().__getitem__(i)


if __name__ == "__main__":
    from lplkit.cli.app import main

    main(sys.argv[1:])
