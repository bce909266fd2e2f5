"""Parameter accounting (each tensor once, everything the task model holds) and the tree view."""

import re

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from deltaprompt import PromptModel, Verbalizer
from deltaprompt.structure import ParameterCount, count_parameters, human, structure

from .conftest import tiny_plm

WORDS = "negative: terrible; positive: great"
# Random soft tokens are the point of these models; their "untrained" warning is not.
pytestmark = pytest.mark.filterwarnings("ignore:the template has randomly initialised soft tokens")


def naive_total(module: nn.Module) -> int:
    return sum(p.numel() for _, p in module.named_parameters(remove_duplicate=False))


def test_tied_embeddings_count_once(gpt2_tokenizer):
    model = tiny_plm("gpt2", gpt2_tokenizer).model
    assert model.lm_head.weight is model.transformer.wte.weight
    count = count_parameters(model)
    embedding = model.transformer.wte.weight.numel()
    assert count.total == naive_total(model) - embedding
    assert count.total == sum(p.numel() for p in model.parameters())
    assert count.trainable == count.total and count.percent == 100.0
    assert count.by_role == {"plm": count.total}


def test_two_parameter_objects_over_one_storage_count_once():
    first = nn.Linear(4, 4, bias=False)
    second = nn.Linear(4, 4, bias=False)
    second.weight = nn.Parameter(first.weight.data)  # a different Parameter, the same memory
    model = nn.Sequential(first, second)
    assert sum(p.numel() for p in model.parameters()) == 32  # what a naive count says
    assert count_parameters(model).total == 16


def test_soft_prompt_only_training_is_counted_by_role(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    model = PromptModel(plm, '{"soft": None, "duplicate": 3} {text} It was {mask}', Verbalizer(WORDS), methods=[])
    count = count_parameters(model)
    soft = model.soft_prompt.weight.numel()
    assert soft == 3 * 32
    assert count.trainable == soft
    assert count.by_role == {"soft": soft}
    assert count.total == count_parameters(plm.model).total + soft
    assert count.percent == pytest.approx(100 * soft / count.total)
    assert count.to_dict()["by_role"] == {"soft": soft}
    assert str(count).startswith(f"trainable {soft:,} of {count.total:,} parameters (")


def test_finetune_without_embeddings_and_a_frozen_model(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    model = PromptModel(plm, "{text} It was {mask}", Verbalizer(WORDS),
                        methods=[{"method": "finetune", "freeze_embeddings": True}])
    count = count_parameters(model)
    embedding = plm.model.transformer.wte.weight.numel()
    assert count.trainable == count.total - embedding
    assert count.frozen == embedding
    assert count.by_role == {"plm": count.trainable}
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = count_parameters(model)
    assert (frozen.trainable, frozen.by_role, frozen.percent) == (0, {}, 0.0)
    assert ParameterCount(0, 0).percent == 0.0


def test_parameters_a_method_keeps_outside_the_module_tree_are_in_the_total(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    model = PromptModel(plm, "{text} It was {mask}", Verbalizer(WORDS), methods=[])

    class Holder:  # a method object holding its own small network
        name = "outside"

        def __init__(self):
            self.projection = nn.Linear(3, 5)

    before = count_parameters(model)
    holder = Holder()
    model.methods.append(holder)
    model.claim(holder.projection.parameters(), "delta")
    after = count_parameters(model)
    assert after.total == before.total + 20
    assert after.by_role == {"delta": 20}
    assert "methods.outside.projection.weight (held by the method)" in structure(model)


def test_structure_collapses_identical_layers_and_marks_tied_weights():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=16, n_layer=5, n_head=2, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    text = structure(model)
    lines = text.splitlines()
    assert lines[0].split() == ["module", "params", "trainable"]
    total = count_parameters(model).total
    assert lines[1].split()[:3] == ["GPT2LMHeadModel", human(total), human(total)]
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    collapsed = next(line for line in lines if "0-4 ×5: GPT2Block" in line)
    assert human(5 * block) in collapsed and f"each {human(block)}" in collapsed
    assert sum("GPT2Block" in line for line in lines) == 1  # one block shown, not five
    assert re.search(r"lm_head: Linear\(16→300, no bias\)\s+0\s+-\s+weight = transformer.wte.weight", text)
    assert "Dropout" not in text and "Dropout" in structure(model, show_empty=True)
    # Blocks that differ (here: one frozen) are not merged with the others.
    for p in model.transformer.h[2].parameters():
        p.requires_grad_(False)
    text = structure(model)
    assert "0-1 ×2: GPT2Block" in text and "2: GPT2Block" in text and "3-4 ×2: GPT2Block" in text


def test_max_depth_hides_deeper_modules_but_keeps_their_counts(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    full = structure(plm.model)
    short = structure(plm.model, max_depth=2)
    assert len(short.splitlines()) < len(full.splitlines())
    assert "c_attn" in full and "c_attn" not in short
    assert re.search(r"h: ModuleList .* modules below", short)
    with pytest.raises(ValueError):
        structure(plm.model, max_depth=-1)


def test_structure_of_a_task_model_with_lora_shows_roles_and_matching_counts(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    model = PromptModel(plm, "{soft} {text} It was {mask}", Verbalizer(WORDS), methods=[])
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True), plm.model)
    lora = [p for n, p in plm.model.named_parameters() if "lora_" in n]
    model.claim(lora, "delta")
    count = count_parameters(model)
    lora_total = sum(p.numel() for p in lora)
    assert count.by_role == {"soft": 32, "delta": lora_total}
    text = structure(model)
    root = text.splitlines()[1].split()
    assert root[:4] == ["PromptModel", human(count.total), human(count.trainable), "soft,delta"]
    assert "lora.Linear" in text and "lora_A: ModuleDict" in text
    assert re.search(r"soft_prompt: SoftPrompt\(1×32\)\s+32\s+32\s+soft", text)
    assert re.search(r"c_attn: lora.Linear.*delta", text)


def test_any_module_and_shared_submodules():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert count_parameters(model).total == 12
    text = structure(model, show_empty=True)
    assert "2: Linear(3→3)" in text and "= 0" in text
    assert "role" not in text.splitlines()[0]
    assert structure(nn.ReLU()).splitlines()[1].split() == ["ReLU", "0", "-"]


def test_human_counts():
    assert [human(n) for n in (0, 999, 1000, 1_234, 999_960, 134_515_008, 7_000_000_000)] == [
        "0", "999", "1.0K", "1.2K", "1.0M", "134.5M", "7.0B"]


def test_parameters_directly_on_a_module_with_children_get_their_own_line():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(7))
            self.inner = nn.Linear(2, 2)

    text = structure(Scaled())
    assert re.search(r"\.scale: Parameter\[7\]\s+7\s+7", text)
    assert text.splitlines()[1].split()[:3] == ["Scaled", "13", "13"]
