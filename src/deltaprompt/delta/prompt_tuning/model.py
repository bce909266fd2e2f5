from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...schema import ConfigError
from ...template import Template
from ..base import DeltaMethod
from .config import PromptTuningConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ...model import TaskModel

logger = logging.getLogger(__name__)
COMMON_TOKENS = 5000  # Lester et al. sample initial vectors from the 5,000 most common tokens


def prepend_soft_tokens(template: Template, num_tokens: int, method: str) -> Template:
    """``template`` with ``num_tokens`` new soft tokens at its very start (so they become the
    table's first rows); 0 returns it unchanged, refusing a template without soft tokens."""
    if num_tokens == 0:
        if not template.has_soft_tokens:
            raise ConfigError(
                f"{method} with num_tokens=0 trains the template's own soft tokens, but "
                f"{template.text!r} has none: set num_tokens > 0, or add soft blocks such as "
                '{"soft": None, "duplicate": 10} or {"soft": "It was"}'
            )
        return template
    # No space after the block: the template's first part keeps the prefix it had.
    block = f'{{"soft": None, "duplicate": {num_tokens}}}'
    return Template(block + template.text, post_processors=dict(template.post_processors))


def prepended_rows(task: TaskModel, num_tokens: int, method: str) -> range:
    """Rows of the soft table holding the block ``prepend_soft_tokens`` added: soft groups are
    numbered in order of appearance, so the leading block is group 0, rows 0..num_tokens-1."""
    template: Template | None = getattr(task, "template", None)
    first = template.parts[0] if template is not None else None
    group = template.soft_groups[0] if template is not None and template.soft_groups else None
    if first is None or first.kind != "soft" or first.soft_group != 0 or group is None or group.length != num_tokens:
        raise RuntimeError(
            f"{method}: the model's template does not start with the {num_tokens} soft tokens this "
            "method adds; build the model with methods=[...] so that it rewrites the template"
        )
    return range(num_tokens)


def common_token_ids(tokenizer: PreTrainedTokenizerBase, vocab_rows: int, limit: int = COMMON_TOKENS) -> list[int]:
    """The first ``limit`` ordinary ids (no special, added-special or BERT ``[unused]`` tokens):
    a stand-in for the most frequent tokens, since vocabularies are roughly frequency-ordered."""
    special = set(tokenizer.all_special_ids)
    special |= {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special}
    ids: list[int] = []
    for i in range(min(vocab_rows, len(tokenizer))):
        if i in special:
            continue
        token = tokenizer.convert_ids_to_tokens(i)
        if isinstance(token, str) and token.startswith("[unused"):
            continue
        ids.append(i)
        if len(ids) == limit:
            break
    return ids


class PromptTuning(DeltaMethod):
    name = "prompt_tuning"
    config_class = PromptTuningConfig
    config: PromptTuningConfig
    order = 70  # after the methods that change the PLM; it only touches the soft tokens
    incompatible = ("p_tuning",)  # both own the soft tokens
    peft_format = True

    def rewrite_template(self, template: Template) -> Template:
        return prepend_soft_tokens(template, self.config.num_tokens, self.name)

    def apply(self, task: TaskModel) -> None:
        if task.soft_prompt is None:
            raise ConfigError(f"{self.name}: the model has no soft tokens to train")
        if self.config.num_tokens:
            self._initialise(task, prepended_rows(task, self.config.num_tokens, self.name))
        task.claim(task.soft_prompt.parameters(), "soft", self.config.lr)

    def init_token_ids(self, task: TaskModel) -> list[int] | None:
        """Vocabulary ids whose embeddings start the prepended tokens (None: keep random)."""
        n, tokenizer = self.config.num_tokens, task.plm.tokenizer
        if self.config.init == "random":
            return None
        if self.config.init == "text":
            ids = tokenizer(self.config.init_text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ConfigError(f"{self.name}: init_text {self.config.init_text!r} tokenises to nothing")
            if len(ids) > n:
                logger.warning("%s: init_text has %d tokens; the first %d start the prompt", self.name, len(ids), n)
            return [ids[i % len(ids)] for i in range(n)]
        rows = task.model.get_input_embeddings().weight.size(0)
        pool = common_token_ids(tokenizer, rows)
        picks = torch.randperm(len(pool))[:n] if n <= len(pool) else torch.randint(len(pool), (n,))
        return [pool[int(i)] for i in picks]

    def _initialise(self, task: TaskModel, rows: range) -> None:
        ids = self.init_token_ids(task)
        if ids is None:
            return  # the task model's own random init (normal, at the embedding matrix's scale)
        embed = task.model.get_input_embeddings()
        weight = task.soft_prompt.weight  # type: ignore[union-attr]
        with torch.no_grad():
            # Through the module, so models that scale their embeddings stay exact.
            vectors = embed(torch.tensor(ids, device=embed.weight.device))
            weight[rows.start : rows.stop] = vectors.to(device=weight.device, dtype=weight.dtype)

    # -- PEFT
    def peft_blocker(self, task: TaskModel) -> str | None:
        """Why PEFT's prompt tuning cannot reproduce ``task`` (None: it can). PEFT puts its
        virtual tokens before everything else in the input, so ours must be exactly there."""
        from ...model import PromptModel, SoftPrompt

        if not isinstance(task, PromptModel):
            return "only a PromptModel's soft tokens map to a PEFT adapter (a classification head has no place in one)"
        others = [m.name for m in task.methods if m is not self]
        if others:
            return f"other delta methods ({', '.join(others)}) also changed the model"
        if not isinstance(task.soft_prompt, SoftPrompt):
            return "the soft tokens are not a plain table"
        if task.prompt_tokenizer.prefix_ids:
            return (
                "the tokenizer puts special tokens (BOS/CLS) before the input, and PEFT would put its "
                "virtual tokens before those"
            )
        if task.family == "masked":
            return "PEFT has no masked-LM task type for prompt tuning"
        soft_parts = [p for p in task.prompt_tokenizer.parts if p.kind == "soft"]
        if task.prompt_tokenizer.parts[0].kind != "soft" or len(soft_parts) != 1 or len(task.template.soft_groups) != 1:
            return "the soft tokens are not one block at the very start of the template"
        return None

    def export(self, task: TaskModel, directory: Path) -> Path | None:
        """A PEFT prompt-tuning adapter (``adapter_config.json`` + ``adapter_model.safetensors``)
        that ``peft.PeftModel.from_pretrained(base_model, directory)`` loads; None, with the
        reason logged, when PEFT cannot express this model.

        PEFT prepends its virtual tokens to whatever it is given, before any BOS/CLS (so such
        tokenizers are refused here) and, in a left-padded batch, before the padding, ignoring
        position ids; its logits equal ours for unpadded rows (one example at a time, or rows
        of equal length), on the text without our placeholder ids for the soft slots."""
        reason = self.peft_blocker(task)
        if reason is not None:
            logger.info("%s: no PEFT adapter written: %s", self.name, reason)
            return None
        from peft import PromptTuningConfig, TaskType
        from safetensors.torch import save_file

        table = task.soft_prompt().detach().float().cpu().contiguous()  # type: ignore[misc]
        config = task.model.config
        peft_config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM if task.family == "causal" else TaskType.SEQ_2_SEQ_LM,
            num_virtual_tokens=table.size(0),
            token_dim=table.size(1),
            num_transformer_submodules=1,  # encoder input only, as ours (PEFT's seq2seq default is 2)
            base_model_name_or_path=getattr(config, "_name_or_path", None) or task.plm.name or None,
        )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        peft_config.save_pretrained(str(directory))
        save_file({"prompt_embeddings": table}, str(directory / "adapter_model.safetensors"))
        return directory
