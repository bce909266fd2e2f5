"""Run by tests/test_distributed.py under ``accelerate launch``: train a tiny model with
DDP on CPU and write each rank's final trainable weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import _byte_level_bpe, tiny_plm  # noqa: E402
from transformers import GPT2Tokenizer  # noqa: E402

from deltaprompt.data import Example  # noqa: E402
from deltaprompt.model import PromptModel  # noqa: E402
from deltaprompt.trainer import TrainConfig, Trainer  # noqa: E402
from deltaprompt.verbalizer import Verbalizer  # noqa: E402


def main(out: str, methods: str) -> None:
    vocab, merges = _byte_level_bpe()
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    model = PromptModel(tiny_plm("gpt2", tokenizer), '{"soft": "Review:"} {text} it was {mask}',
                        Verbalizer({"neg": "terrible", "pos": "great"}), methods=methods.split(","))
    train = [Example(text, label=label) for text, label in [("the movie was great", "pos"), ("a terrible film", "neg"),
                                             ("wonderful acting", "pos"), ("boring dull plot", "neg")]] * 4
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        save_file({n: p.detach().clone().contiguous() for n, p in model.trainable_parameters().items()},
                  os.path.join(out, "initial.safetensors"))
    result = Trainer(model, TrainConfig(epochs=3, batch_size=2, lr=1e-3, progress=False, cpu=True)).fit(train, train[:4])
    weights = {n: p.detach().contiguous() for n, p in model.trainable_parameters().items()}
    save_file(weights, os.path.join(out, f"rank{rank}.safetensors"), metadata={"steps": str(result.steps)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
