"""Classification metrics: accuracy, macro-F1, confusion matrix (and a readable print of them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def confusion_matrix(gold: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """counts[i, j] = examples of class i predicted as class j."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({g for g in gold if g not in index} | {p for p in predicted if p not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(classes)}")
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, ([index[g] for g in gold], [index[p] for p in predicted]), 1)
    return counts


def accuracy(counts: np.ndarray) -> float:
    total = counts.sum()
    return float(np.trace(counts) / total) if total else 0.0


def per_class_f1(counts: np.ndarray) -> np.ndarray:
    true_positive = np.diag(counts).astype(float)
    predicted = counts.sum(0)
    actual = counts.sum(1)
    denominator = predicted + actual
    return np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)


def macro_f1(counts: np.ndarray, exclude: Sequence[int] = ()) -> float:
    """Unweighted mean of per-class F1 over classes that occur in gold or predictions, leaving
    out the class indices in ``exclude`` (SemEval-2010's "Other"); their examples still count
    as misses of the classes predicted for them."""
    present = (counts.sum(0) + counts.sum(1)) > 0
    present[list(exclude)] = False
    return float(per_class_f1(counts)[present].mean()) if present.any() else 0.0


@dataclass
class Evaluation:
    """Metrics of one labelled run, with the predictions they came from."""

    classes: tuple[str, ...]
    gold: list[str]
    predictions: list[str]
    probabilities: np.ndarray
    confusion: np.ndarray = field(init=False)
    ignore: tuple[str, ...] = ()  # classes left out of macro-F1 (a relation task's "Other")

    def __post_init__(self) -> None:
        unknown = [c for c in self.ignore if c not in self.classes]
        if unknown:
            raise ValueError(f"ignore lists {unknown}, which are not among the classes {list(self.classes)}")
        self.ignore = tuple(self.ignore)
        self.confusion = confusion_matrix(self.gold, self.predictions, self.classes)

    @property
    def accuracy(self) -> float:
        return accuracy(self.confusion)

    @property
    def macro_f1(self) -> float:
        return macro_f1(self.confusion, [self.classes.index(c) for c in self.ignore])

    def summary(self) -> dict[str, float | int]:
        return {"n": len(self.gold), "accuracy": self.accuracy, "macro_f1": self.macro_f1}

    def report(self) -> str:
        """Accuracy, macro-F1 and the confusion matrix as plain text."""
        width = max(8, *(len(c) for c in self.classes))
        lines = [
            f"examples  {len(self.gold)}",
            f"accuracy  {self.accuracy:.4f}",
            f"macro-F1  {self.macro_f1:.4f}" + (f" (without {', '.join(self.ignore)})" if self.ignore else ""),
            "",
            "confusion (rows: gold, columns: predicted)",
            " " * width + " " + " ".join(f"{c[:width]:>{width}}" for c in self.classes),
        ]
        for name, row in zip(self.classes, self.confusion, strict=True):
            lines.append(f"{name:>{width}} " + " ".join(f"{n:>{width}d}" for n in row))
        return "\n".join(lines)
