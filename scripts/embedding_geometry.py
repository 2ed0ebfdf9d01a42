"""How the default model's embeddings of one character scatter, as a model for synthetic index data.

    python scripts/embedding_geometry.py      # prints JSON

The test split of the default model's corpus (scripts/default_model.py's split, faces it never
trained on), embedded through the shipped ONNX path. Reports the cosine between two faces of one
character and of two characters, and the effective dimension (participation ratio of the
eigenvalues) of the faces' scatter around their character's mean: near the full 256 means the
scatter is as isotropic as `benchmarks/index_synthetic.py --data clustered` assumes.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from corpus import corpus_arguments, load_corpus
from PIL import Image
from recipe import SPLIT

from kyara.pipeline import Recognizer
from kyara.train.data import split_by_group


def effective_dimension(rows: np.ndarray) -> float:
    eigenvalues = np.linalg.eigvalsh(np.cov(rows.T))
    return float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpus_arguments(parser)
    args = parser.parse_args()
    data = load_corpus(args.data, args.faces, args.cache).images
    _, _, test_idx = split_by_group(data.labels, data.groups, SPLIT, args.seed)
    test = data.subset(test_idx)
    embedder = Recognizer().embedder
    batches = range(0, len(test.labels), 256)
    vectors = np.concatenate([embedder.embed([Image.fromarray(p) for p in test.pixels[i : i + 256]]) for i in batches])
    characters = np.unique(test.labels)
    means = np.stack([vectors[test.labels == c].mean(0) for c in characters])
    centre_of = {c: i for i, c in enumerate(characters)}
    scatter = vectors - means[[centre_of[c] for c in test.labels]]
    cosines = vectors @ vectors.T
    same = test.labels[:, None] == test.labels[None]
    np.fill_diagonal(same, False)
    other = test.labels[:, None] != test.labels[None]
    report = {
        "faces": len(test.labels),
        "characters": len(characters),
        "dim": int(vectors.shape[1]),
        "same_character_cosine_p10_p50_p90": np.percentile(cosines[same], [10, 50, 90]).round(3).tolist(),
        "other_characters_cosine_p50_p99_p999": np.percentile(cosines[other], [50, 99, 99.9]).round(3).tolist(),
        "scatter_effective_dimension": round(effective_dimension(scatter), 1),
        "character_means_effective_dimension": round(effective_dimension(means), 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
