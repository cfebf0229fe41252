"""ImageNet-1k class names in the standard order (sorted WordNet ids, as ImageFolder reads train/ and val/)."""
import csv
from pathlib import Path
from typing import List

CLASSES_FILE = Path(__file__).with_name("imagenet1k_classes.tsv")
NUM_CLASSES = 1000


def class_names() -> List[str]:
    """The 1000 human-readable names, index i naming class i of torchvision and timm weights."""
    with CLASSES_FILE.open(encoding="utf-8", newline="") as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    return [row["name"] for row in sorted(rows, key=lambda row: int(row["index"]))]
