"""fp8 storage applied shard by shard as the transformer is read (models/loading.py `_shard_by_shard`): the model
is exactly the one the cast after loading made, and the host never holds the whole transformer as read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from skyreels_cli.models import loading
from skyreels_cli.models.tiny import build_components
from skyreels_cli.runtime.memory import apply_quantization, fp8_as_read

BF16, FP8 = torch.bfloat16, torch.float8_e4m3fn
ROOT = Path(__file__).resolve().parents[1]


def save_sharded(transformer: torch.nn.Module, folder: Path, shard: int) -> Path:
    """`transformer` in bf16 as a checkpoint folder in the released layout, in shards of at most `shard` bytes."""
    transformer.to(BF16).save_pretrained(folder / "transformer", max_shard_size=shard)
    (folder / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", type(transformer).__name__]}))
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    folder = save_sharded(build_components("df", seed=4)["transformer"], tmp_path_factory.mktemp("sharded"), 12_000)
    assert len(list((folder / "transformer").glob("*.safetensors"))) > 3  # really several shards
    return folder


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == FP8 else t


def test_fp8_as_read_is_the_model_the_cast_after_loading_made(tiny_checkpoint):
    old = apply_quantization(loading._read_transformer(tiny_checkpoint, BF16), "fp8")
    new = apply_quantization(loading._read_transformer(tiny_checkpoint, BF16, fp8_as_read(BF16)), "fp8")
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(old_state) == list(new_state)
    for name, tensor in old_state.items():
        assert new_state[name].dtype == tensor.dtype, name
        assert torch.equal(_bits(new_state[name]), _bits(tensor)), name
    assert sum(t.dtype == FP8 for t in new_state.values()) > 10  # fp8 storage really applied
    assert [type(m) for m in new.modules()] == [type(m) for m in old.modules()]  # the same fp8 layer classes
    assert all(not p.is_meta for p in new.parameters())
    g = torch.Generator().manual_seed(1)
    x = {"hidden_states": torch.randn(1, 16, 2, 8, 8, generator=g, dtype=BF16),
         "timestep": torch.tensor([900]), "fps": [1], "encoder_hidden_states": torch.randn(1, 12, 32, generator=g, dtype=BF16)}
    with torch.no_grad():
        out_old, out_new = old(**x, return_dict=False)[0], new(**x, return_dict=False)[0]
        plain = loading._read_transformer(tiny_checkpoint, BF16)(**x, return_dict=False)[0]
    assert torch.equal(out_old, out_new)
    assert not torch.equal(out_new, plain)  # fp8 changes the numbers: equality above could have failed


PEAK = """
import json, sys, torch
from pathlib import Path
from diffusers.models import model_loading_utils
from skyreels_cli.models import loading
from skyreels_cli.runtime.memory import apply_quantization, fp8_as_read

def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

read_shard, before = model_loading_utils.load_state_dict, []
def first_shard(*args, **kwargs):  # the resident set when the weights start to be read (imports, skeleton done)
    before.append(before[0] if before else kb("VmRSS"))
    return read_shard(*args, **kwargs)

model_loading_utils.load_state_dict = first_shard
folder, as_read = Path(sys.argv[1]), sys.argv[2] == "as_read"
model = loading._read_transformer(folder, torch.bfloat16, fp8_as_read(torch.bfloat16) if as_read else None)
apply_quantization(model, "fp8")
print(json.dumps({"growth": (kb("VmHWM") - before[0]) * 1024}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak resident set from /proc (Linux)")
def test_the_load_peak_is_one_shard_plus_the_fp8_model_not_the_whole_bf16(tmp_path):
    """A 152 MB transformer in 16 shards, each load in a fresh process, the peak resident set above the one when the
    first shard is read: the cast after loading reads the mapped bf16 pages of every shard while making the fp8
    copy; shard by shard holds the fp8 model and about one shard, below the whole bf16 transformer."""
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    big = SkyReelsV2Transformer3DModel(num_attention_heads=8, attention_head_dim=128, in_channels=16, out_channels=16,
                                       text_dim=64, freq_dim=64, ffn_dim=4096, num_layers=4, cross_attn_norm=True)
    whole = sum(p.numel() for p in big.parameters()) * 2  # bytes in bf16
    folder = save_sharded(big, tmp_path, whole // 16)
    del big
    shards = sorted((folder / "transformer").glob("*.safetensors"))
    assert len(shards) >= 12
    biggest = max(s.stat().st_size for s in shards)

    def growth(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", PEAK, str(folder), mode], check=False, capture_output=True,
                              text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                           "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])["growth"]

    old, new = growth("after"), growth("as_read")
    fp8_bytes = whole // 2
    print(f"bf16 {whole / 1e6:.0f} MB, largest shard {biggest / 1e6:.0f} MB: peak growth old {old / 1e6:.0f} MB, "
          f"shard by shard {new / 1e6:.0f} MB")
    assert new < fp8_bytes + 3 * biggest < whole
    assert new < 0.8 * old  # the check can fail: the same measure of the cast after loading is well above it
