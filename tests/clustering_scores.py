"""How well `kyara.cluster` groups faces whose characters are known: purity and adjusted Rand
index. Used by tests/test_cluster.py and benchmarks/cluster_quality.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def clustering_scores(truth: Sequence[str], assignment: np.ndarray) -> dict:
    """Purity (share of clustered faces in their group's majority character), adjusted Rand index
    (each noise face counted as a group of its own), noise share and number of groups."""
    assignment = np.asarray(assignment)
    clustered = assignment >= 0
    majority = sum(
        Counter(t for t, keep in zip(truth, assignment == group) if keep).most_common(1)[0][1]
        for group in np.unique(assignment[clustered])
    )
    singletons = np.where(clustered, assignment, -1 - np.arange(len(assignment)))
    return {
        "faces": len(assignment),
        "groups": len(np.unique(assignment[clustered])),
        "characters": len(set(truth)),
        "purity": round(majority / max(1, int(clustered.sum())), 4),
        "ari": round(adjusted_rand_index(list(truth), singletons.tolist()), 4),
        "noise_share": round(1 - float(clustered.mean()), 4) if len(assignment) else 0.0,
    }


def adjusted_rand_index(truth: Sequence, predicted: Sequence) -> float:
    """Agreement of two partitions, 1 = identical, about 0 = chance (Hubert and Arabie, 1985)."""
    _, rows = np.unique([str(t) for t in truth], return_inverse=True)
    _, columns = np.unique([str(p) for p in predicted], return_inverse=True)
    table = np.zeros((rows.max(initial=-1) + 1, columns.max(initial=-1) + 1), np.int64)
    np.add.at(table, (rows, columns), 1)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) // 2).sum())

    together, by_truth, by_prediction = pairs(table), pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = by_truth * by_prediction / max(1.0, pairs(np.array([len(rows)])))
    best = (by_truth + by_prediction) / 2
    return 1.0 if best == expected else (together - expected) / (best - expected)
