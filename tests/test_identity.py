import itertools

import numpy as np
import pytest

from conftest import OBAMA
from facestudio.faces import SAME_PERSON_THRESHOLDS, DlibRecognizer, Embedding, FaceAnalyzer, cosine_similarity

THRESHOLD = SAME_PERSON_THRESHOLDS["dlib"]


@pytest.fixture(scope="module")
def embeddings(analyzer, photos):
    return {name: analyzer.embed(image) for name, image in photos.items()}


def test_embeddings_are_normalised(embeddings):
    for emb in embeddings.values():
        assert emb.model == "dlib" and emb.vector.shape == (128,)
        assert abs(np.linalg.norm(emb.vector) - 1.0) < 1e-5
        assert not emb.vector.flags.writeable


@pytest.mark.parametrize("a, b", list(itertools.combinations(OBAMA, 2)))
def test_obama_pairs_are_same_person(embeddings, a, b):
    assert cosine_similarity(embeddings[a], embeddings[b]) >= THRESHOLD


@pytest.mark.parametrize("a", OBAMA)
def test_obama_biden_pairs_are_different(embeddings, a):
    assert cosine_similarity(embeddings[a], embeddings["biden.jpg"]) < THRESHOLD


def test_margins_around_the_threshold(embeddings):
    same = [embeddings[a].similarity(embeddings[b]) for a, b in itertools.combinations(OBAMA, 2)]
    different = [embeddings[a].similarity(embeddings["biden.jpg"]) for a in OBAMA]
    assert min(same) - THRESHOLD > 0.02 and THRESHOLD - max(different) > 0.05


def test_dlib_and_torch_backends_agree(analyzer, photos):
    native = FaceAnalyzer(detector=analyzer.detector, recognizer=DlibRecognizer(backend="dlib"))
    for name in ("obama.jpg", "biden.jpg"):
        face = analyzer.detect(photos[name])[0]
        a, b = analyzer.embed(photos[name], face), native.embed(photos[name], face)
        assert np.abs(a.vector - b.vector).max() < 1e-4


def test_our_alignment_matches_dlibs_own_chips(analyzer, photos):
    """The "dlib" template reproduces dlib's chip closely enough that embeddings barely move."""
    import dlib

    from facestudio.faces.model_files import dlib_model_file

    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat")))
    net = dlib.face_recognition_model_v1(str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")))
    for name in ("obama.jpg", "obama3.jpg", "biden.jpg"):
        image = photos[name]
        theirs = np.array(net.compute_face_descriptor(image, predictor(image, hog(image, 1)[0])))
        ours = analyzer.embed(image).vector
        assert float(ours @ theirs / np.linalg.norm(theirs)) > 0.985


def test_batch_equals_singles(analyzer, photos):
    image = np.concatenate([photos["obama2.jpg"], photos["32bit.png"]], axis=1)
    faces = analyzer.detect(image)
    assert len(faces) == 2
    batch = analyzer.embed_faces(image, faces)
    for face, emb in zip(faces, batch):
        assert np.abs(analyzer.embed(image, face).vector - emb.vector).max() < 1e-5


def test_models_cannot_be_mixed():
    with pytest.raises(ValueError, match="cannot compare"):
        cosine_similarity(Embedding(np.ones(4), "dlib"), Embedding(np.ones(4), "sface"))


def test_bad_crops_and_backend():
    with pytest.raises(ValueError, match=r"\[N, 150, 150, 3\]"):
        DlibRecognizer().embed_crops(np.zeros((1, 112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown dlib recogniser backend"):
        DlibRecognizer(backend="onnx")
