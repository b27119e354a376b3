"""Prompt enhancement with a tiny random causal LM built here and placed in the offline Hub cache: the path
runs, is deterministic, is recorded beside the original prompt, frees the LLM before the video model loads,
and a missing enhancer is one line naming `skyreels download`. Needs the shared-file diff of issue 9 part c."""

import gc
import json
import weakref

import pytest
import torch
from typer.testing import CliRunner

from skyreels_cli.cli import app
from skyreels_cli.core import enhance as E
from skyreels_cli.errors import ModelError

from .conftest import ALIASES, place_in_hub_cache

REPO = "tester/tiny-enhancer"
WORDS = ["a", "the", "fox", "cat", "runs", "walks", "in", "snow", "forest", "light", "camera", "slow", "pan", "close",
         "wide", "shot", "golden", "hour", "soft", "warm", "film"]


def build_tiny_lm(dest):
    """A 2-layer Granite causal LM and a word-level tokenizer with a chat template (transformers picks its own
    tokenizer class for qwen2/llama configs, so a generic model type keeps ours)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GraniteConfig, GraniteForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + ["system", "user", "assistant", ".", ","] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                        unk_token="<unk>")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                           eos_token_id=vocab["<|im_end|>"], pad_token_id=0)
    lm = GraniteForCausalLM(config).eval()
    with torch.no_grad():  # specials never win the argmax: the answer is words, not an early stop
        for w in specials:
            lm.lm_head.weight[vocab[w]].zero_()
    tokenizer.save_pretrained(dest)
    lm.save_pretrained(dest)


@pytest.fixture(scope="module")
def tiny_enhancer(hf_home, tmp_path_factory):
    src = tmp_path_factory.mktemp("lm")
    build_tiny_lm(src)
    place_in_hub_cache(src, REPO, hf_home / "hub", commit="e" * 40)
    return REPO


@pytest.fixture
def loaded_llms(monkeypatch):
    """Weak references to every LLM the enhancer loads."""
    from transformers import AutoModelForCausalLM

    refs = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def tracked(cls, *args, **kwargs):
        model = real(cls, *args, **kwargs)
        refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(tracked))
    return refs


def test_enhancer_runs_is_deterministic_and_frees_the_llm(tiny_enhancer, loaded_llms):
    first = E.enhance_prompt("a fox runs in the snow", tiny_enhancer, device="cpu", max_new_tokens=24)
    again = E.enhance_prompt("a fox runs in the snow", tiny_enhancer, device="cpu", max_new_tokens=24)
    assert first.prompt and first.prompt == again.prompt and first.original == "a fox runs in the snow"
    assert "\n" not in first.prompt and "<" not in first.prompt and len(first.prompt.split()) > 3  # words, no specials
    gc.collect()
    assert len(loaded_llms) == 2 and all(ref() is None for ref in loaded_llms), "an LLM outlived its call"


def test_the_system_prompt_and_greedy_decoding_reach_the_llm(tiny_enhancer, monkeypatch):
    from transformers import GenerationMixin

    seen = {}
    real = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        seen["config"] = kwargs["generation_config"]
        seen["ids"] = kwargs["input_ids"]
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    E.enhance_prompt("a fox in the snow", tiny_enhancer, device="cpu", max_new_tokens=8)
    assert seen["config"].do_sample is False and seen["config"].max_new_tokens == 8
    # One token per word here: the whole system prompt and the user's words, in the chat template's order.
    from transformers import AutoTokenizer

    from skyreels_cli.core.enhance import enhancer_folder

    chat = AutoTokenizer.from_pretrained(enhancer_folder(tiny_enhancer)).decode(seen["ids"][0]).split()
    assert len(chat) >= len(E.SYSTEM_PROMPT.split()) + 5
    assert chat[:2] == ["<|im_start|>", "system"] and chat[-9:] == [
        "user", "a", "fox", "in", "the", "snow", "<|im_end|>", "<|im_start|>", "assistant"]


def test_clean_output_keeps_one_paragraph():
    assert E.clean_output('Here is the rewritten prompt:\n\n"A wide shot of a fox."\n\nNote: I added light.') == \
        "A wide shot of a fox."
    assert E.clean_output("**Enhanced prompt:** Close-up, slow pan.  The fox\nruns.") == \
        "Close-up, slow pan. The fox runs."
    # Cut off by the token limit: ends at its last whole sentence.
    assert E.clean_output("<think>plan</think>A fox runs in the snow. Golden light falls on the came") == \
        "A fox runs in the snow."


def test_registry_default_and_a_missing_enhancer_names_skyreels_download(hub_models):
    assert E.enhancer_repo(None) == "Qwen/Qwen2.5-1.5B-Instruct" and E.is_enhancer("qwen2.5-1.5b")
    with pytest.raises(ModelError) as missing:
        E.enhance_prompt("a fox", device="cpu")
    assert "`skyreels download qwen2.5-1.5b`" in str(missing.value) and "\n" not in str(missing.value)
    result = CliRunner().invoke(app, ["t2v", "a fox", "-m", ALIASES["df"], "--device", "cpu", "--enhance",
                                      "--dry-run"])
    assert result.exit_code == 2 and "skyreels download" in result.output


def test_cli_enhances_records_and_frees_the_llm_before_the_video_model(tiny_enhancer, loaded_llms, tmp_path,
                                                                       monkeypatch):
    import skyreels_cli.core.model as model_module

    real_load = model_module.load_components
    alive_at_video_load = []

    def load_components(*args, **kwargs):
        gc.collect()
        alive_at_video_load.append([ref() is not None for ref in loaded_llms])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(model_module, "load_components", load_components)
    out = tmp_path / "fox.mp4"
    result = CliRunner().invoke(app, ["extend", "a fox runs in the snow", "-m", ALIASES["df"], "--height", "64",
                                      "--width", "64", "--frames", "17", "--steps", "2", "--seed", "1", "--device",
                                      "cpu", "--enhancer", tiny_enhancer, "-o", str(out)])
    assert result.exit_code == 0, result.output
    request = json.loads((tmp_path / "fox.mp4.json").read_text())["request"]
    expected = E.enhance_prompt("a fox runs in the snow", tiny_enhancer, device="cpu")
    assert request["prompt_original"] == "a fox runs in the snow" and request["prompt"] == expected.prompt
    assert f"enhanced prompt ({tiny_enhancer}" in result.output and expected.prompt in result.output
    assert alive_at_video_load == [[False]], "the LLM was still alive when the video model loaded"
