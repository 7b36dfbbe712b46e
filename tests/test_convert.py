"""`facestudio convert`: pickled checkpoints become safetensors without running anything in them."""

import os

import pytest
import torch
from safetensors.torch import load_file

from facestudio.cli import main


def _checkpoint():
    return {"image_proj": {"proj.weight": torch.randn(12, 8).half(), "norm.weight": torch.ones(4).half()},
            "ip_adapter": {"1.to_k_ip.weight": torch.randn(4, 4).half(), "1.to_v_ip.weight": torch.randn(4, 4).half()}}


def test_bin_becomes_flat_safetensors(tmp_path, capsys):
    state = _checkpoint()
    torch.save(state, tmp_path / "ip-adapter.bin")
    assert main(["convert", str(tmp_path / "ip-adapter.bin")]) == 0
    out = tmp_path / "ip-adapter.safetensors"
    assert capsys.readouterr().out.strip() == str(out)
    flat = load_file(str(out))
    assert set(flat) == {f"{p}.{k}" for p in state for k in state[p]}
    assert all(torch.equal(flat[f"{p}.{k}"], v) and flat[f"{p}.{k}"].dtype == torch.float16
               for p in state for k, v in state[p].items())
    # never over an existing file without --force
    assert main(["convert", str(tmp_path / "ip-adapter.bin")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "ip-adapter.bin"), "--force"]) == 0


class _Payload:
    """A pickle that would write a file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"image_proj": {"x": _Payload(str(marker))}, "ip_adapter": {}}, tmp_path / "evil.bin")
    assert main(["convert", str(tmp_path / "evil.bin")]) == 2
    err = capsys.readouterr().err
    assert "loads safely as tensors only" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()


@pytest.mark.parametrize("content, message", [
    ({"state_dict": {"w": torch.zeros(2)}}, "not an IP-Adapter checkpoint"),
    ({"image_proj": {"w": torch.zeros(2)}, "ip_adapter": {"n": 3}}, "is not a tensor"),
])
def test_other_checkpoints_are_refused(tmp_path, capsys, content, message):
    torch.save(content, tmp_path / "x.bin")
    assert main(["convert", str(tmp_path / "x.bin")]) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["x.bin"]


def test_missing_and_garbage_files(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "none.bin")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.bin").write_bytes(b"not a pickle at all")
    assert main(["convert", str(tmp_path / "junk.bin")]) == 2
    assert "loads safely" in capsys.readouterr().err


def test_converted_file_loads_in_stock_diffusers_like_the_pickle(tmp_path):
    from diffusers import StableDiffusionPipeline

    from facestudio.guidance import identity as idg
    from facestudio.guidance.layout import convert_pickle_checkpoint
    from facestudio.models import tiny_components

    components = {k: v for k, v in tiny_components().items() if k != "image_encoder"}
    config = idg.IdentityAdapterConfig(cross_attention_dim=components["unet"].config.cross_attention_dim)
    torch.save(idg.new_identity_adapter(components["unet"], config, seed=4), tmp_path / "adapter.bin")
    convert_pickle_checkpoint(tmp_path / "adapter.bin")
    loaded = []
    for name in ("adapter.bin", "adapter.safetensors"):
        pipe = StableDiffusionPipeline(**{**components, "unet": tiny_components()["unet"]})
        pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name=name, image_encoder_folder=None)
        loaded.append(pipe.unet.state_dict())
    assert loaded[0].keys() == loaded[1].keys() and all(torch.equal(loaded[0][k], loaded[1][k]) for k in loaded[0])
