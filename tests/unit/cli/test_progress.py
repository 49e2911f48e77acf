"""`LiveProgress` when stderr is not a terminal (a SLURM log): plain lines, one every `log_every`
seconds plus the last one, instead of rich's bar (which writes at most its final state to a file)."""

from __future__ import annotations

from lplkit.cli.progress import LiveProgress


def test_plain_lines_every_update_with_zero_interval(capsys):
    with LiveProgress("train", total=10, log_every=0.0, log_unit="steps", rate_unit="step") as bar:
        bar.update(5, info="loss 0.5")
        bar.update(10, info="loss 0.4")
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(",")[0] for ln in lines] == [
        "train: 5/10 steps (50.0%)",
        "train: 10/10 steps (100.0%)",
    ]
    assert lines[1].endswith("ETA 0s, loss 0.4") and "step/s" in lines[1]


def test_long_interval_prints_only_the_last_line(capsys):
    with LiveProgress("items", log_every=1e9) as bar:
        for i in range(1, 6):
            bar.update(i, 5)
    assert capsys.readouterr().err.splitlines() == ["items: 5/5 (100.0%), ETA 0s"]


def test_the_end_line_is_written_once(capsys):
    """A job that reports its last item and then its total again (encode's final shard, then the
    summary update) wrote the 100% line twice into a piped log."""
    with LiveProgress("encode", total=4, log_every=0.0, log_unit="images") as bar:
        bar.update(2)
        bar.update(4)
        bar.update(4, info="finalized")
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(",")[0] for ln in lines] == [
        "encode: 2/4 images (50.0%)",
        "encode: 4/4 images (100.0%)",
    ]
