"""Prompt enhancement: a short idea rewritten by a local instruction-tuned LLM into the kind of detailed,
cinematic description SkyReels-V2 was trained on.

    enhanced = enhance_prompt("a fox in the snow")          # the registry's default enhancer
    request = Request(prompt=enhanced.prompt, prompt_original=enhanced.original, ...)

The LLM (a transformers causal LM with a chat template) is loaded, asked once with greedy decoding (the same
prompt gives the same text on the same machine) and freed before the function returns, so it never shares
memory with the video model that loads after it. Which LLM: `[enhancers]` in weights.toml, `--enhancer` to
choose another (an alias there, a Hub repo id or a local folder).
"""

from __future__ import annotations

import gc
import re
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import ModelError, UsageError, setting
from ..models.hub import hub_errors, looks_like_repo_id
from ..models.loading import auto_device
from .request import Request

# What the LLM is told; data, so that it can be read, tested and changed in one place.
SYSTEM_PROMPT = (
    "You write prompts for a text-to-video model trained on film footage. Rewrite the user's idea as one "
    "paragraph of 60 to 120 words of plain English that says, in this order: the shot size and the camera "
    "movement; the subject and how it looks; the action as it unfolds; the setting; the lighting and colours; "
    "the visual style. Keep everything the user asked for and add nothing that contradicts it. No dialogue, no "
    "lists, no headings, no quotation marks. Answer with the paragraph only."
)
MAX_NEW_TOKENS = 256  # about 190 words: room for the paragraph, well inside the text encoder's 512 tokens
# Files a causal LM and its tokenizer load from (no .bin/.pth duplicates, no GGUF or ONNX exports).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.py"]


@dataclass(frozen=True)
class Enhanced:
    original: str
    prompt: str  # the rewritten prompt, one paragraph
    enhancer: str  # the repo id or folder that wrote it
    seconds: float


# ------------------------------------------------------------------ which LLM


def enhancer_table() -> tuple[str, dict[str, str]]:
    """(default alias, alias -> Hub repo id) from weights.toml's `[enhancers]`."""
    from ..models.registry import _registry_file

    table = dict(tomllib.loads(_registry_file().read_text()).get("enhancers", {}))
    default = table.pop("default", None)
    if default is None or default not in table:
        raise ModelError(f"weights.toml has no [enhancers] default; reinstall skyreels or pass {setting('enhancer')}")
    return default, table


def enhancer_repo(name: str | None = None) -> str:
    """The Hub repo id (or local folder) `name` stands for; None is the registry's default."""
    default, table = enhancer_table()
    name = name or default
    return table.get(name, name)


def is_enhancer(name: str) -> bool:
    """A name `skyreels download` should fetch as an enhancer (an alias or repo of `[enhancers]`)."""
    _, table = enhancer_table()
    return name in table or name in table.values()


def enhancer_folder(name: str | None = None, *, download: bool = True) -> Path:
    """The local folder of the enhancer: a folder as given, else its Hub snapshot (downloaded when allowed and
    online). Missing: a one-line ModelError that says how to fetch it."""
    repo = enhancer_repo(name)
    local = Path(repo).expanduser()
    if local.is_dir():
        return local.resolve()
    if not looks_like_repo_id(repo):
        _, table = enhancer_table()
        raise UsageError(f"{setting('enhancer', repo)}: not a folder, a Hub repo id (org/name) or one of {', '.join(table)}")
    from huggingface_hub import snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    fetch = f"run `skyreels download {name or enhancer_table()[0]}` (or drop {setting('enhance', True)})"
    with hub_errors(f"prompt enhancer {repo}", repo, fetch=fetch):
        if not download:
            found = try_to_load_from_cache(repo, "config.json")
            if not isinstance(found, str):
                raise LocalEntryNotFoundError(f"{repo} is not cached")
            return Path(found).parent
        return Path(snapshot_download(repo, allow_patterns=ALLOW_PATTERNS))


# ------------------------------------------------------------------ asking it


def enhance_prompt(prompt: str, enhancer: str | None = None, *, device: str | torch.device = "auto",
                   dtype: torch.dtype | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                   progress: bool = True) -> Enhanced:
    """`prompt` rewritten by the enhancer LLM on `device` ("auto": CUDA when visible). The LLM is freed
    (and its CUDA memory handed back) before this returns. `progress`: show a download's progress."""
    from ..quiet import third_party_quiet

    if not prompt.strip():
        raise UsageError(f"{setting('enhance', True)} needs a prompt to rewrite")
    started = time.perf_counter()
    with third_party_quiet(not progress):
        folder = enhancer_folder(enhancer)
    dev = auto_device(device)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    try:
        with third_party_quiet():  # the LLM's loading bars and generation warnings are noise here
            text = _generate(folder, prompt.strip(), dev, dtype, max_new_tokens)
    finally:
        gc.collect()  # the LLM's last references went with _generate's frame
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    cleaned = clean_output(text)
    if not cleaned:
        raise ModelError(f"prompt enhancer {enhancer_repo(enhancer)} returned no usable text; run without {setting('enhance', True)}")
    return Enhanced(prompt, cleaned, enhancer_repo(enhancer), round(time.perf_counter() - started, 3))


def _generate(folder: Path, prompt: str, device: torch.device, dtype: torch.dtype, max_new_tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise ModelError(f"prompt enhancer {folder} has no chat template: use an instruction-tuned model")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load the prompt enhancer in {folder}: {str(exc).splitlines()[0]}") from None
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(device)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    # A fresh config: the checkpoint's own may ask for sampling; greedy makes the rewrite repeatable.
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=config)
    new = out[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True)


def clean_output(text: str) -> str:
    """The LLM's answer as one paragraph: reasoning, a leading label or intro line, markdown, quotes and any
    notes after the first paragraph removed; an answer cut off by the token limit ends at its last sentence."""
    text = re.sub(r"<think>.*?(</think>|$)", "", text, flags=re.DOTALL | re.IGNORECASE)
    lines = [line.strip() for line in text.strip().splitlines()]
    while lines and (not lines[0] or lines[0].endswith(":")):  # "Here is the rewritten prompt:"
        lines.pop(0)
    paragraph = " ".join(" ".join(lines).split()) if "" not in lines else " ".join(" ".join(
        lines[: lines.index("")]).split())
    paragraph = re.sub(r"^(\*\*|__)?(enhanced |rewritten |video )?(prompt|description)(\*\*|__)?\s*:\s*", "",
                       paragraph, flags=re.IGNORECASE)
    paragraph = re.sub(r"[*_#`]+", "", paragraph).strip().strip("\"'“”‘’ ").strip()
    if paragraph and paragraph[-1] not in ".!?":
        end = max(paragraph.rfind(mark) for mark in ".!?")
        if end > 0:  # cut mid-sentence by the token limit: a half sentence would only confuse the video model
            paragraph = paragraph[: end + 1]
    return paragraph


def enhancer_name(enhance: str) -> str | None:
    """A job's `enhance` as `enhancer_folder` takes it: "default" is the registry's (None)."""
    return None if enhance == "default" else enhance


def enhancer_note(enhance: str) -> str:
    """Where the enhancer would come from, one line, without loading it (a dry run); offline, a missing one is
    the error a run would give."""
    name = enhancer_name(enhance)
    try:
        enhancer_folder(name, download=False)
        where = "cached"
    except ModelError:
        from ..models.hub import is_offline

        if is_offline():
            raise
        where = "to be downloaded"
    return f"prompt: to be rewritten by {enhancer_repo(name)} ({where}) before the video model loads"


def enhance_request(request: Request, enhance: str, device: str | torch.device = "auto",
                    progress: bool = True) -> tuple[Request, Enhanced]:
    """`request` with its prompt rewritten by the enhancer `enhance` ("default": the registry's) and the user's
    kept as `prompt_original`; and what the enhancer did."""
    enhanced = enhance_prompt(request.prompt, enhancer_name(enhance), device=device, progress=progress)
    return replace(request, prompt=enhanced.prompt, prompt_original=enhanced.original), enhanced
