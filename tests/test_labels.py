"""Labels of generated images, read back by standard tools: exiftool (XMP digital source type, A1111 parameters),
c2pa-python's Reader (content credentials), PIL (the facestudio JSON); from the Python output's save()."""

import subprocess

import pytest
from PIL import Image

from conftest import TRAINED, assert_labelled, tiny_facestudio_pipeline
from facestudio.errors import FaceStudioError
from facestudio.imaging import read_png_metadata
from facestudio.labels import signing
from facestudio.labels.schema import normalised
from facestudio.pipeline import IdentityInput
from facestudio.request import GenerationSettings


@pytest.fixture(scope="module")
def output(faces_dir):
    pipe = tiny_facestudio_pipeline()
    people = [IdentityInput(photos=(faces_dir / "obama.jpg",), name="obama", region=(0, 0, 32, 64)),
              IdentityInput(photos=(faces_dir / "biden.jpg",), name="biden", strength=0.5)]
    return pipe(GenerationSettings("a portrait, oil painting", negative_prompt="blurry", identities=tuple(people),
                                   width=64, height=64, num_inference_steps=2, seed=7))


def exif(path, *tags):
    return subprocess.run(["exiftool", "-s3", *(f"-{t}" for t in tags), str(path)], capture_output=True,
                          text=True, check=True).stdout.splitlines()


def test_python_output_save_writes_every_label(output, tmp_path):
    path = output.save(tmp_path / "portrait.png")
    manifest = assert_labelled(path)
    assert manifest["claim_generator_info"][0]["name"] == "facestudio"
    assert manifest["signature_info"]["common_name"] == "facestudio local signer"
    meta = read_png_metadata(path)
    assert meta["ai_generated"] is True and meta["digital_source_type"] == TRAINED
    assert meta["identities"] == [{"name": "obama", "strength": 1.0, "region": [0, 0, 32, 64]},
                                  {"name": "biden", "strength": 0.5, "region": None}]
    assert meta["adapters"] == [{"kind": "identity", "type": "facestudio"}]
    assert (meta["seed"], meta["steps"], meta["width"], meta["height"]) == (7, 2, 64, 64)
    parameters = Image.open(path).info["parameters"]
    assert parameters.split("\n")[:2] == ["a portrait, oil painting", "Negative prompt: blurry"]
    assert "Steps: 2, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 7, Size: 64x64" in parameters
    assert "FaceStudio identities: \"obama, biden\", FaceStudio strengths: \"1, 0.5\"" in parameters
    assert exif(path, "Parameters") == [parameters.replace("\n", ".")]  # exiftool shows newlines as dots


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_jpeg_and_webp_carry_xmp_parameters_and_credentials(output, tmp_path, suffix):
    path = output.save(tmp_path / f"portrait{suffix}")
    assert Image.open(path).format == {".jpg": "JPEG", ".webp": "WEBP"}[suffix]
    assert_labelled(path)
    assert exif(path, "UserComment")[0].startswith("a portrait, oil painting.Negative prompt: blurry.Steps: 2")


def test_a_format_without_labels_is_refused(output, tmp_path):
    with pytest.raises(FaceStudioError, match=r"\.gif"):
        output.save(tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()


def test_user_configured_key_signs(output, tmp_path, monkeypatch):
    own = tmp_path / "own"
    signing.create_local_pair(own)
    monkeypatch.setenv(signing.KEY_ENV, str(own / signing.KEY_FILE))
    monkeypatch.setenv(signing.CERT_ENV, str(own / signing.CHAIN_FILE))
    monkeypatch.setenv(signing.DIR_ENV, str(tmp_path / "unused"))
    assert_labelled(output.save(tmp_path / "own.png"))
    assert not (tmp_path / "unused").exists()
    with open(own / signing.CHAIN_FILE, "rb") as f:
        assert signing.signing_credentials().chain == f.read()


def test_signing_configuration_mistakes_are_named(output, tmp_path, monkeypatch):
    monkeypatch.setenv(signing.KEY_ENV, str(tmp_path / "key.pem"))
    with pytest.raises(FaceStudioError, match="set both FACESTUDIO_C2PA_KEY .* and FACESTUDIO_C2PA_CERT"):
        output.save(tmp_path / "a.png")
    monkeypatch.setenv(signing.CERT_ENV, str(tmp_path / "chain.pem"))
    with pytest.raises(FaceStudioError, match=r"FACESTUDIO_C2PA_KEY.*cannot read .*key\.pem"):
        output.save(tmp_path / "a.png")
    (tmp_path / "key.pem").write_text("not a key")
    (tmp_path / "chain.pem").write_text("not a chain")
    with pytest.raises(FaceStudioError, match="not an unencrypted PEM private key"):
        output.save(tmp_path / "a.png")
    assert not list(tmp_path.glob("a.png*")) and not list(tmp_path.glob(".a.png*"))


def test_the_local_pair_is_made_once_and_kept(tmp_path, monkeypatch):
    folder = tmp_path / "pair"
    monkeypatch.setenv(signing.DIR_ENV, str(folder))
    first = signing.signing_credentials()
    assert first.algorithm == "es256" and (folder / signing.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert signing.signing_credentials().key == first.key
    from cryptography import x509

    signer, ca = x509.load_pem_x509_certificates(first.chain)
    assert ca.subject == ca.issuer == signer.issuer  # a self-signed local CA issued the signer
    assert not signer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_files_from_before_the_one_schema_read_the_same():
    cli = normalised({"adapter": "./faceid", "style_adapter": None, "prompt": "x"})
    server = normalised({"adapters": ["identity", "style"], "prompt": "x"})
    assert cli == {"adapters": [{"kind": "identity", "source": "./faceid"}], "prompt": "x"}
    assert server["adapters"] == [{"kind": "identity"}, {"kind": "style"}]
    assert normalised({"adapters": [{"kind": "identity"}]}) == {"adapters": [{"kind": "identity"}]}


def test_concurrent_saves_are_each_signed_and_carry_no_image_copy(output, tmp_path):
    from conftest import run_in_threads

    def save(key):
        return output.save(tmp_path / f"{key}-{len(list(tmp_path.iterdir()))}-{id(object())}.png")

    paths = [p for results in run_in_threads(save, ["a", "b", "c"], repeats=3).values() for p in results]
    assert len(set(paths)) == 9
    for path in paths:
        assert "thumbnail" not in assert_labelled(path)  # c2pa's default JPEG copy of the image is left out
