"""Training on the tiny model and the real photos: examples, frozen base, gradients, exact resume, output."""

import json

import numpy as np
import pytest
import torch

from facestudio.cli import main
from facestudio.models import tiny_components
from facestudio.pipeline import FaceStudioPipeline, IdentityInput
from facestudio.training.dataset import MASK_FILL, ConditionDropout, FaceCache, ReconstructionDataset
from facestudio.training.prepare import PrepareSettings, prepare_dataset
from facestudio.training.trainer import TrainSettings, build_parts, step_generator, train, training_loss
from test_prepare import make_photo_folder

NO_DROP = ConditionDropout(0.0, 0.0, 0.0, 0.0)
QUICK = dict(sample_every=-1, checkpoint_every=0, learning_rate=1e-3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, faces_dir, analyzer):
    root = tmp_path_factory.mktemp("photos")
    make_photo_folder(root, faces_dir, with_bad=False)
    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare_dataset(root, out, PrepareSettings(resolution=64), analyzer=analyzer, progress=False)
    return out


@pytest.fixture(scope="module")
def cache(cache_dir):
    return FaceCache(cache_dir)


def test_the_condition_hides_the_face_and_the_identity_comes_from_it(cache):
    data = ReconstructionDataset(cache, seed=3, dropout=NO_DROP)
    example = data[0]
    sample = cache.load(int(data.order(0)[0]))
    image = ((example["pixel_values"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert np.array_equal(image, sample["image"])
    hidden = sample["face_mask"]
    condition = example["conditioning"].numpy()
    assert (condition[hidden] == MASK_FILL).all()
    assert np.array_equal(condition[~hidden], sample["image"][~hidden])
    assert np.allclose(example["id_embeddings"][0].numpy(), sample["embedding"])
    assert example["id_present"].tolist() == [True] and example["id_masks"].min() == 1.0  # one person: everywhere
    # an example is a function of (seed, position): the same again, another with another seed
    again = data[0]
    assert all(torch.equal(again[k], example[k]) for k in ("pixel_values", "conditioning", "id_embeddings"))
    other = ReconstructionDataset(cache, seed=4, dropout=NO_DROP)
    assert not all(torch.equal(other[i]["pixel_values"], data[i]["pixel_values"]) for i in range(3))


def test_each_condition_is_dropped_at_its_rate(cache):
    text = ReconstructionDataset(cache, dropout=ConditionDropout(text=1.0, identity=0.0, style=0.0, all=0.0),
                                 default_caption="a photo")
    assert all(text[i]["caption"] == "" and not text[i]["drop_style"] for i in range(5))
    identity = ReconstructionDataset(cache, dropout=ConditionDropout(text=0.0, identity=1.0, style=0.0, all=0.0),
                                     default_caption="a photo")
    ex = identity[0]
    assert ex["caption"] != "" and not ex["id_present"].any()
    assert not ex["id_embeddings"].any() and not ex["id_detail"].any()  # the null identity of inference
    everything = ReconstructionDataset(cache, dropout=ConditionDropout(0.0, 0.0, 0.0, all=1.0))
    ex = everything[1]
    assert ex["caption"] == "" and ex["drop_style"] and not ex["id_present"].any()
    half = ReconstructionDataset(cache, dropout=ConditionDropout(0.0, identity=0.5, style=0.0, all=0.0))
    dropped = np.mean([not half[i]["id_present"].any() for i in range(200)])
    assert 0.35 < dropped < 0.65


def test_multi_identity_examples_keep_each_person_in_their_own_strip(cache):
    data = ReconstructionDataset(cache, seed=1, dropout=NO_DROP, multi_identity=1.0, max_identities=2)
    for position in range(4):
        ex = data[position]
        assert ex["identity_count"] == 2 and ex["id_present"].all()
        masks = ex["id_masks"].numpy()
        assert (masks.sum(0) <= 1.0 + 1e-6).all()  # disjoint regions
        assert masks[0][:, 32:].max() == 0 and masks[1][:, :32].max() == 0
        assert masks[0].sum() > 100 and masks[1].sum() > 100
        landmarks = ex["id_landmarks"].numpy()
        assert (landmarks[0, :, 0] < 40).all() and (landmarks[1, :, 0] > 24).all()
        # each person's identity is the recogniser's embedding of that person's own photo
        embeddings = {tuple(np.round(cache.load(i)["embedding"], 5)) for i in range(len(cache))}
        assert all(tuple(np.round(e, 5)) in embeddings for e in ex["id_embeddings"].numpy())
        assert not torch.equal(ex["id_embeddings"][0], ex["id_embeddings"][1])


def test_every_guidance_parameter_gets_gradient_the_base_none_and_the_identity_loss_counts(cache_dir, tmp_path):
    from accelerate import Accelerator

    config = TrainSettings(cache=str(cache_dir), output=str(tmp_path), batch_size=2, drop_text=0.0,
                           drop_identity=0.0, drop_style=0.0, drop_all=0.0, multi_identity=1.0,
                           identity_loss_weight=1.0, identity_loss_max_timestep=999)
    accelerator = Accelerator(cpu=True)
    parts = build_parts(config, accelerator)
    data = ReconstructionDataset(FaceCache(cache_dir), 0, config.dropout(), 1.0, 2)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    trainable = dict(parts.guidance.named_parameters())

    def loss_and_grads():
        parts.guidance.zero_grad(set_to_none=True)
        loss = training_loss(parts, parts.guidance, accelerator, batch, step_generator(0, 0, 0))
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in trainable.items() if p.grad is not None}

    with_identity, grads = loss_and_grads()
    assert len(trainable) > 50 and {a.kind for a in parts.guidance.adapters} == {"identity", "style"}
    assert [n for n, p in trainable.items() if n not in grads or not grads[n].abs().sum() > 0] == []
    ids = {id(p) for p in trainable.values()}
    for module in (parts.pipe.unet, parts.pipe.vae, parts.pipe.text_encoder, parts.style_encoder.model):
        base = [p for p in module.parameters() if id(p) not in ids]
        assert base and all(not p.requires_grad and p.grad is None for p in base)
    # the same step without the identity loss: lower loss (1 - cos of an untrained model's face is far from
    # 0), other gradients
    parts.recognizer_net, recognizer = None, parts.recognizer_net
    plain, plain_grads = loss_and_grads()
    assert with_identity > plain + 0.05
    assert any(not torch.allclose(grads[n], plain_grads[n]) for n in grads)
    # the identity loss alone: the recogniser's 1 - cos on the decoded predicted faces, in (0, 2)
    assert 0 < with_identity - plain < 2 and recognizer is not None


def test_resume_continues_the_same_curve_base_unchanged_folder_loads(cache_dir, tmp_path):
    settings = dict(cache=str(cache_dir), max_steps=4, sample_every=-1, learning_rate=1e-3, multi_identity=0.5,
                    batch_size=2)
    whole = train(TrainSettings(output=str(tmp_path / "whole"), checkpoint_every=2, **settings), progress=False)
    assert len(set(np.round(whole.losses, 6))) == 4 and all(np.isfinite(whole.losses))  # a real curve
    resumed = train(TrainSettings(output=str(tmp_path / "resumed"), checkpoint_every=0,
                                  resume=str(tmp_path / "whole" / "checkpoints" / "checkpoint-2"), **settings),
                    progress=False)
    assert resumed.start_step == 2
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=1e-6)
    a = whole.pipeline.unet.encoder_hid_proj.projection.state_dict()
    b = resumed.pipeline.unet.encoder_hid_proj.projection.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    # the base model's weights are exactly those it started with
    fresh, trained = tiny_components(), whole.pipeline
    for name in ("vae", "text_encoder", "unet"):
        before, after = fresh[name].state_dict(), getattr(trained, name).state_dict()
        assert set(before) <= set(after)
        assert all(torch.equal(before[k], after[k]) for k in before), name

    # the output folder loads into a fresh pipeline with exactly the trained weights, which moved, and generates
    pipe = FaceStudioPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    pipe.load_guidance(tmp_path / "whole")
    assert {a.kind for a in pipe.facestudio_adapters} == {"identity", "style"}
    loaded = pipe.unet.encoder_hid_proj.projection.state_dict()
    assert all(torch.equal(loaded[k], a[k]) for k in a)
    from facestudio.guidance import identity as idg

    config = idg.IdentityAdapterConfig(cross_attention_dim=pipe.unet.config.cross_attention_dim)
    start = idg.new_identity_adapter(FaceStudioPipeline(**tiny_components()).unet, config, seed=0)["image_proj"]
    now = idg.projection_to_checkpoint(pipe.unet.encoder_hid_proj.projection.image_projection_layers[0])
    assert any(not torch.equal(start[k], now[k]) for k in start)
    image = pipe("a portrait", identities=[IdentityInput(identity=cache_sample_identity(cache_dir))],
                 num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    config = json.loads((tmp_path / "whole" / "train_config.json").read_text())
    assert config["base_model"] == "tiny" and config["steps"] == 4


def cache_sample_identity(cache_dir):
    from facestudio.guidance.identity import Identity

    sample = FaceCache(cache_dir).load(0)
    return Identity(sample["embedding"], sample["detail"].astype(np.float32), "dlib", "cached")


def test_a_base_model_folder_and_from_pretrained_with_the_guidance(cache_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    base = tmp_path / "base"
    StableDiffusionPipeline(**tiny_components()).save_pretrained(base)
    result = train(TrainSettings(cache=str(cache_dir), output=str(tmp_path / "run"), base_model=str(base),
                                 max_steps=1, **QUICK), progress=False)
    pipe = FaceStudioPipeline.from_pretrained(base, guidance=tmp_path / "run", safety_checker=None,
                                              requires_safety_checker=False)
    assert [a.kind for a in pipe.facestudio_adapters] == ["identity", "style"]
    loaded = pipe.unet.encoder_hid_proj.projection.state_dict()
    trained = result.pipeline.unet.encoder_hid_proj.projection.state_dict()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["base_model"] == str(base)


def test_train_command(cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", str(cache_dir), "--output", str(out), "--max-steps", "2", "--checkpoint-every", "1",
            "--sample-every", "1", "--sample-steps", "2", "--num-samples", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "loss: mean of the first 2 steps" in printed and "trained steps 1-2" in printed
    assert (out / "loss.png").is_file() and (out / "samples" / "step-000001.png").is_file()
    assert (out / "samples" / "step-000002.png").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert (out / "checkpoints" / "checkpoint-1" / "guidance" / "identity" / "ip-adapter.safetensors").is_file()
    assert main(args) == 2  # would mix two runs
    assert "--resume latest" in capsys.readouterr().err
    assert main(args[:5] + ["4", "--resume", "latest", "--sample-every", "-1", "--checkpoint-every", "0"]) == 0
    assert "trained steps 3-4" in capsys.readouterr().out
    assert main(["train", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    assert "not a face cache" in capsys.readouterr().err
    assert main(["train", str(cache_dir), "--output", str(tmp_path / "y"), "--base-model", "./sd15"]) == 2
    assert "--image-encoder" in capsys.readouterr().err
    for option, value, message in (("--checkpoints-total-limit", "-1", "checkpoints total limit must be at least 1"),
                                   ("--num-workers", "-1", "num workers must be"),
                                   ("--max-grad-norm", "-0.5", "max grad norm must be")):
        assert main(["train", str(cache_dir), "--output", str(tmp_path / "z"), option, value]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_fifty_steps_on_the_test_photos_lower_the_loss_and_resume_continues_them(faces_dir, tmp_path, capsys):
    """The issue's acceptance run: prepare, then 50 steps on the tiny model, offline, in under 5 minutes."""
    import time

    started = time.monotonic()
    assert main(["prepare", str(faces_dir), str(tmp_path / "cache"), "--resolution", "64"]) == 0
    args = ["train", str(tmp_path / "cache"), "--max-steps", "50", "--learning-rate", "1e-3",
            "--checkpoint-every", "25", "--sample-every", "25", "--sample-steps", "4"]
    assert main(args + ["--output", str(tmp_path / "run")]) == 0
    elapsed = time.monotonic() - started
    printed = capsys.readouterr().out
    losses = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-50" / "training_state.json").read_text())
    losses = losses["losses"]
    assert len(losses) == 50 and np.mean(losses[-10:]) < np.mean(losses[:10])
    assert elapsed < 300, elapsed
    assert f"of the last 10 steps {np.mean(losses[-10:]):.4f}" in printed
    assert main(args + ["--output", str(tmp_path / "again"), "--resume",
                        str(tmp_path / "run" / "checkpoints" / "checkpoint-25")]) == 0
    again = json.loads((tmp_path / "again" / "checkpoints" / "checkpoint-50" / "training_state.json").read_text())
    np.testing.assert_allclose(again["losses"], losses, rtol=1e-6)
    # the fall is learning, not lucky draws: the same 50 steps with a vanishing learning rate stay high
    control = train(TrainSettings(cache=str(tmp_path / "cache"), output=str(tmp_path / "control"), max_steps=50,
                                  learning_rate=1e-9, checkpoint_every=0, sample_every=-1), progress=False)
    assert np.mean(losses[-10:]) < 0.9 * np.mean(control.losses[-10:])
