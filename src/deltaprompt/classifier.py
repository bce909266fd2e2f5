"""PromptClassifier: classify text with a template and a verbalizer, scikit-learn style.

    clf = PromptClassifier("smollm2-135m", "Review: {text}\\nSentiment: {mask}",
                           {"negative": "negative", "positive": "positive"})
    clf.predict(["a gripping, funny film"])        # ['positive']
    clf.predict_proba(examples)                   # (N, classes) probabilities
    clf.evaluate(labelled_examples).report()      # accuracy, macro-F1, confusion matrix
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import Example, as_examples
from .metrics import Evaluation
from .model import PromptModel
from .plm import PLM, Family, load_plm
from .template import Template
from .tokenization import Truncation
from .verbalizer import Aggregation, MultiToken, Verbalizer

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. (2021)


class PromptClassifier:
    """Zero-shot (and, once trained, few-shot) classification through a prompt.

    ``plm``: a loaded ``PLM`` or a model name/path/alias. ``label_words``: a ``Verbalizer`` or
    anything it accepts. ``calibrate``: True for contextual calibration with the usual
    content-free inputs, or your own list of them. Long inputs are processed in batches sorted
    by length (little padding) with a progress bar.
    """

    def __init__(
        self,
        plm: PLM | str,
        template: Template | str,
        label_words: Verbalizer | Any,
        *,
        classes: Sequence[str] | None = None,
        aggregation: Aggregation = "mean",
        multi_token: MultiToken = "first",
        family: Family | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        calibrate: bool | Sequence[str] = False,
        device: str | torch.device | None = None,
        progress: bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if isinstance(plm, str):
            plm = load_plm(plm, family, device=device)
        elif device is not None:
            plm.model.to(device)
        verbalizer = (
            label_words
            if isinstance(label_words, Verbalizer)
            else Verbalizer(label_words, classes, aggregation=aggregation, multi_token=multi_token)
        )
        self.model = PromptModel(plm, template, verbalizer, max_length=max_length, truncation=truncation)
        self.batch_size = batch_size
        self.progress = progress
        self.calibration: torch.Tensor | None = None  # log p(class | content-free input)
        if calibrate:
            self.calibrate(CONTENT_FREE if calibrate is True else calibrate)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes

    @property
    def template(self) -> Template:
        return self.model.template

    def calibrate(self, content_free: Sequence[str] = CONTENT_FREE) -> PromptClassifier:
        """Contextual calibration: divide out the class prior the prompt itself induces,
        measured on inputs with no content (every template field set to e.g. "N/A")."""
        if not content_free:
            raise ValueError("calibration needs at least one content-free input")
        names = [f for f in self.template.fields if f not in ("text", "text_b")]
        inputs = [Example(t, t, meta=dict.fromkeys(names, t)) for t in content_free]
        self.calibration = None
        log_probs = self._log_proba(inputs, show=False)
        self.calibration = torch.logsumexp(log_probs, 0) - np.log(len(inputs))  # log of mean prob
        return self

    def predict_log_proba(self, examples: Iterable[Example | str]) -> np.ndarray:
        return self._log_proba(as_examples(examples)).numpy()

    def predict_proba(self, examples: Iterable[Example | str]) -> np.ndarray:
        """(N, classes) probabilities, columns in the order of ``classes``."""
        return np.exp(self.predict_log_proba(examples))

    def predict(self, examples: Iterable[Example | str]) -> list[str]:
        return [self.classes[i] for i in self.predict_log_proba(examples).argmax(1)]

    def evaluate(self, examples: Iterable[Example]) -> Evaluation:
        """Predict labelled examples and measure accuracy, macro-F1 and the confusion matrix."""
        examples = as_examples(examples)
        unlabelled = [i for i, e in enumerate(examples) if e.label is None]
        if unlabelled:
            raise ValueError(f"evaluation needs labels; examples {unlabelled[:5]} have none")
        probabilities = np.exp(self._log_proba(examples).numpy())
        predictions = [self.classes[i] for i in probabilities.argmax(1)]
        return Evaluation(self.classes, [e.label for e in examples], predictions, probabilities)  # type: ignore[misc]

    @torch.inference_mode()
    def _log_proba(self, examples: list[Example], show: bool | None = None) -> torch.Tensor:
        if not examples:
            return torch.empty(0, len(self.classes))
        model = self.model
        model.eval()
        features = model.encode(examples)
        order = sorted(range(len(features)), key=lambda i: model.length(features[i]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        show = self.progress if show is None else show
        bar = tqdm(
            batches,
            desc="classifying",
            unit="batch",
            disable=(not show) if show is not None else (len(batches) <= 4 or None),
        )
        out = torch.empty(len(examples), len(self.classes))
        for batch_index in bar:
            batch = model.to_device(model.collate([features[i] for i in batch_index]))
            out[batch_index] = model(batch).float().cpu()
        if self.calibration is not None:
            out = torch.log_softmax(out - self.calibration, -1)
        return out
