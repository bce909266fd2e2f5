"""The uniform interface of delta methods: one config dataclass, one method class.

Each method lives in its own folder (``delta/<name>/config.py`` and ``model.py``, plus
``layer.py`` for methods that add modules). A method is applied to a ``TaskModel`` after the
PLM has been frozen: it adds or unfreezes parameters, ``claim``s them with a role (so they get
their learning rate), and may append an input transform. Methods read the PLM's structure from
its modules, never from a table of model names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..schema import to_dict

if TYPE_CHECKING:
    from ..model import TaskModel
    from ..template import Template


@dataclass
class DeltaConfig:
    """Base of every method's config. ``lr``: learning rate of this method's parameters
    (None: the trainer's rate for their role)."""

    lr: float | None = None

    def __post_init__(self) -> None:
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


class DeltaMethod:
    """Applies one delta method to a task model; subclasses set the class variables."""

    name: ClassVar[str]
    config_class: ClassVar[type[DeltaConfig]]
    order: ClassVar[int] = 50  # application order; PEFT injections (which re-freeze) come first
    incompatible: ClassVar[tuple[str, ...]] = ()  # methods it cannot be combined with
    peft_format: ClassVar[bool] = False  # whether ``export`` writes a PEFT adapter

    def __init__(self, config: DeltaConfig | None = None):
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def rewrite_template(self, template: Template) -> Template:
        """The template this method trains with (prompt tuning prepends its soft tokens)."""
        return template

    def apply(self, task: TaskModel) -> None:
        raise NotImplementedError

    def fold(self, task: TaskModel) -> bool:
        """Turn training-time machinery into its inference form (P-Tuning's encoder into plain
        vectors); True if anything changed."""
        return False

    def export(self, task: TaskModel, directory: Path) -> Path | None:
        """Also write the trained weights in another library's format (PEFT); the folder
        written, or None when this method has none."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **self.config.to_dict()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
