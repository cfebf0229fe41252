"""ImageNet-1k classes in the standard order (sorted WordNet ids, as ImageFolder reads train/ and val/).

Checkpoints store class lists as folder names; for ImageNet those are WordNet ids (n01440764, ...),
which `display_names` turns into readable names (tench, Tinca tinca, ...).
"""
import csv
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

CLASSES_FILE = Path(__file__).with_name("imagenet1k_classes.tsv")
NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def _table() -> Tuple[Tuple[str, str], ...]:
    """(WordNet id, readable name) of classes 0..999."""
    with CLASSES_FILE.open(encoding="utf-8", newline="") as table:
        rows = sorted(csv.DictReader(table, delimiter="\t"), key=lambda row: int(row["index"]))
    return tuple((row["wnid"], row["name"]) for row in rows)


def wnids() -> List[str]:
    """The 1000 WordNet ids: the class-folder names of an ImageNet train/ or val/ tree."""
    return [wnid for wnid, _ in _table()]


def class_names() -> List[str]:
    """The 1000 human-readable names, index i naming class i of torchvision and timm weights."""
    return [name for _, name in _table()]


def display_names(classes: Sequence[str]) -> List[str]:
    """Readable names for class-folder names: WordNet ids become ImageNet names, others stay."""
    readable = dict(_table())
    return [readable.get(name, name) for name in classes]


def model_classes(num_classes: int, saved: Optional[List[str]] = None) -> List[str]:
    """The class list labels are resolved against: the model's own (class folders, WordNet ids), else
    ImageNet's WordNet ids for 1000 classes, else the indices as text."""
    if saved and len(saved) == num_classes:
        return list(saved)
    if num_classes == NUM_CLASSES:
        return wnids()
    return [str(i) for i in range(num_classes)]
