from __future__ import annotations

import numpy as np

from kyara.classify import MIN_CONCENTRATION, Classifier, enrolled_prototypes, gallery_prototype


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def faces_of_one_character(rng: np.random.Generator, count: int, centre: np.ndarray, spread: float) -> np.ndarray:
    return unit(centre + spread * rng.standard_normal((count, len(centre))))


def test_enrolled_prototype_scores_like_the_true_centre():
    """From 5 pictures, the plain cosine to their mean underrates a character's own faces; the
    prototype's score estimates the cosine to the character's real centre (measured here on 4000)."""
    rng = np.random.default_rng(0)
    centre = np.zeros(64)
    centre[0] = 1.0
    population = faces_of_one_character(rng, 4000, centre, 0.15)
    true_centre = population.mean(axis=0)
    target = float(np.mean(population @ (true_centre / np.linalg.norm(true_centre))))
    corrected, plain = [], []
    for _ in range(300):
        shots, query = faces_of_one_character(rng, 5, centre, 0.15), faces_of_one_character(rng, 1, centre, 0.15)
        mean = shots.mean(axis=0)
        corrected.append(float(query[0] @ gallery_prototype(shots, prior=1.0)))
        plain.append(float(query[0] @ (mean / np.linalg.norm(mean))))
    assert abs(np.mean(corrected) - target) < 0.02
    assert np.mean(plain) < target - 0.05


def test_prototype_of_identical_pictures_is_the_picture_and_one_picture_uses_the_prior():
    vector = unit(np.arange(1.0, 9.0)[None])[0]
    np.testing.assert_allclose(gallery_prototype(np.stack([vector] * 3), prior=0.5), vector, atol=1e-6)
    np.testing.assert_allclose(gallery_prototype(vector[None], prior=0.5), vector / 0.5)
    np.testing.assert_allclose(gallery_prototype(vector[None], prior=0.01), vector / MIN_CONCENTRATION)


def test_scattered_pictures_cannot_inflate_scores_without_bound():
    pictures = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 1.0, 0]])  # a mean of length 1/3
    np.testing.assert_allclose(gallery_prototype(pictures, prior=1.0), pictures.mean(axis=0) / MIN_CONCENTRATION)


def test_similarities_take_each_labels_best_prototype_and_predictions_report_at_most_one():
    prototypes = np.array([[2.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    classifier = Classifier(["a", "b"], prototypes, 0.05, 0.5, owners=np.array([0, 1, 1]))
    faces = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    np.testing.assert_allclose(classifier.similarities(faces), [[2.0, 0.6], [1.2, 1.0]], atol=1e-6)
    first, second = classifier.predict(faces)
    assert (first.label, first.similarity, second.label, second.similarity) == ("a", 1.0, "a", 1.0)


def test_a_face_drawn_in_gray_meets_the_gray_prototypes_and_a_colour_face_the_colour_ones():
    head = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    gray_head = np.array([[0.0, 0.0, 1.0], [0.0, 0.6, 0.8]], np.float32)
    classifier = Classifier.trained(["a", "b"], head, gray_head, typical=None)
    faces = np.array([[0.0, 0.0, 1.0], [0.8, 0.6, 0.0]], np.float32)
    np.testing.assert_allclose(classifier.similarities(faces), [[0.0, 0.0], [0.8, 0.6]], atol=1e-6)
    in_gray = classifier.similarities(faces, np.array([True, True]))
    np.testing.assert_allclose(in_gray, [[1.0, 0.8], [0.0, 0.36]], atol=1e-6)
    mixed = classifier.similarities(faces, np.array([True, False]))
    np.testing.assert_allclose(mixed, [[1.0, 0.8], [0.8, 0.6]], atol=1e-6)
    assert [p.label for p in classifier.predict(faces, gray=np.array([True, False]))] == ["a", "a"]
    colour_only = Classifier.trained(["a", "b"], head, None, typical=None)
    np.testing.assert_allclose(colour_only.similarities(faces, np.array([True, True])), [[0, 0], [0.8, 0.6]], atol=1e-6)


def test_a_character_without_a_gray_prototype_meets_gray_faces_with_its_colour_one():
    """An enrolled character whose gray copies were never made (a gallery of an older kyara)."""
    prototypes = [[(np.array([1.0, 0.0]), False), (np.array([0.0, 1.0]), True)], [(np.array([0.6, 0.8]), False)]]
    classifier = Classifier.of_characters(["a", "old"], prototypes, 0.05, 0.0, None, dim=2)
    face = np.array([[0.0, 1.0]], np.float32)
    np.testing.assert_allclose(classifier.similarities(face, np.array([True])), [[1.0, 0.8]], atol=1e-6)
    np.testing.assert_allclose(classifier.similarities(face, np.array([False])), [[0.0, 0.8]], atol=1e-6)


def test_enrolled_gray_copies_make_a_second_prototype_and_missing_ones_none():
    colour = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    gray = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)  # the second picture's gray copy was not made
    (own, own_kind), (made, made_kind) = enrolled_prototypes(colour, gray, prior=0.8)
    assert (own_kind, made_kind) == (False, True)
    np.testing.assert_allclose(own, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(made, [0.0, 1.25], atol=1e-6)  # one picture: the prior's length
    assert len(enrolled_prototypes(colour, np.zeros_like(gray), prior=0.8)) == 1


def test_a_face_is_unknown_by_how_far_it_falls_short_of_its_characters_typical_similarity():
    """A score of 0.75 is ordinary for a character whose own faces vary (typical 0.7) and far too
    low for one drawn alike in every picture (typical 0.95): the first is named, the second not."""
    prototypes = np.eye(2, dtype=np.float32)
    classifier = Classifier(["loose", "tight"], prototypes, 0.05, -0.1, typical=np.array([0.7, 0.95]))
    faces = unit(np.array([[0.75, np.sqrt(1 - 0.75**2)], [np.sqrt(1 - 0.75**2), 0.75]]))
    np.testing.assert_allclose(classifier.familiarity(classifier.similarities(faces)), [0.05, -0.2], atol=1e-6)
    named, unknown = classifier.predict(faces)
    assert (named.label, unknown.label) == ("loose", None)
    assert unknown.top_k[0].label == "tight"
    absolute = Classifier(["loose", "tight"], prototypes, 0.05, 0.7)
    assert [p.label for p in absolute.predict(faces)] == ["loose", "tight"]
