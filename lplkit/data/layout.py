"""What kind of dataset a local directory holds, from a few cheap checks (never a full walk).

| kind | how it is recognised | read by |
| --- | --- | --- |
| `disk` | `dataset_info.json` + `state.json` (`Dataset.save_to_disk`) or `dataset_dict.json` (`DatasetDict.save_to_disk`) | `datasets.load_from_disk` |
| `parquet` | `*.parquet` at the top or one level down (hub layout `data/{split}-*.parquet`, `{split}/*.parquet`) | `datasets`' parquet builder, splits as `datasets` resolves them |
| `wds` | `*.tar` shards at the top and nothing of the above | the WebDataset source |
| `imagefolder` | a `metadata.jsonl` / `metadata.csv` / `metadata.parquet` at the top or one level down, or top-level folders that are all split names (`train`, `validation`, `test`, ...) | `datasets`' imagefolder builder (captions and splits kept) |
| `folder` | anything else | torchvision-style class folders |
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["METADATA_FILES", "SPLIT_KEYWORDS", "directory_kind", "split_folder_names"]

METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


#: `datasets.data_files.SPLIT_KEYWORDS` (datasets 3-5), copied so that telling a class-folder
#: directory from a split-folder one does not import `datasets` (~1.5 s); a unit test checks the copy.
SPLIT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}


def split_folder_names() -> set[str]:
    """Folder names `datasets` reads as split names."""
    return {name for names in SPLIT_KEYWORDS.values() for name in names}


def _visible_dirs(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir()]
    except OSError:
        return []


def directory_kind(path: str | Path) -> str | None:
    """`disk`, `parquet`, `wds`, `imagefolder` or `folder` for a directory; None if not one."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return None
    if (root / "dataset_dict.json").is_file() or (
        (root / "dataset_info.json").is_file() and (root / "state.json").is_file()
    ):
        return "disk"
    has_metadata = any((root / m).is_file() for m in METADATA_FILES)
    if not has_metadata and (any(root.glob("*.parquet")) or any(root.glob("*/*.parquet"))):
        return "parquet"
    if any(root.glob("*.tar")):
        return "wds"
    if has_metadata:
        return "imagefolder"
    subdirs = _visible_dirs(root)
    if any((d / m).is_file() for d in subdirs for m in METADATA_FILES):
        return "imagefolder"
    if subdirs and {d.name.lower() for d in subdirs} <= split_folder_names():
        return "imagefolder"
    return "folder"
