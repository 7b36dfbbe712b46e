"""`load_generation_pipeline`: the one path from model names to a pipeline, shared by generate, serve and eval."""

import pytest

from facestudio.errors import ModelFileError
from facestudio.loading import adapter_folder, load_generation_pipeline, style_beside


def test_tiny_models_with_both_adapters(analyzer):
    pipe = load_generation_pipeline("tiny", adapter="tiny", style_adapter="tiny", face_analyzer=analyzer)
    assert [a.kind for a in pipe.facestudio_adapters] == ["identity", "style"]
    assert pipe.facestudio_adapters[0].config.recognizer == analyzer.recognizer.name


def test_saved_adapters_load_back_by_folder(analyzer, tmp_path):
    pipe = load_generation_pipeline("tiny", adapter="tiny", style_adapter="tiny", face_analyzer=analyzer)
    pipe.save_adapters(tmp_path)
    assert adapter_folder(tmp_path, "identity") == tmp_path / "identity"
    assert style_beside(tmp_path) == tmp_path / "style"
    again = load_generation_pipeline("tiny", adapter=tmp_path, face_analyzer=analyzer)  # style/ found beside
    assert [a.kind for a in again.facestudio_adapters] == ["identity", "style"]
    identity_only = load_generation_pipeline("tiny", adapter=tmp_path, face_analyzer=analyzer, with_style=False)
    assert [a.kind for a in identity_only.facestudio_adapters] == ["identity"]


def test_bad_adapter_folders_are_named(tmp_path):
    with pytest.raises(ModelFileError, match="no such folder"):
        load_generation_pipeline("tiny", adapter=tmp_path / "missing")
    with pytest.raises(ModelFileError, match="not a facestudio identity adapter"):
        load_generation_pipeline("tiny", adapter=tmp_path)
    assert style_beside(tmp_path) is None and style_beside("tiny") is None


def test_importing_the_pipelines_prints_nothing():
    """Without torchvision (facestudio needs none), importing diffusers makes transformers print a note per image
    processor that it uses the PIL backend; facestudio drops that note and nothing else of transformers'."""
    import subprocess
    import sys

    code = ("import facestudio.pipeline, facestudio.pipeline_xl, facestudio.pipeline_flux\n"
            "from transformers.utils import logging\n"
            "logging.get_logger('transformers.utils.import_utils').warning('another note')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "" and run.stderr.strip() == "[transformers] another note", run.stderr
