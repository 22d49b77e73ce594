"""The longest vertically monotone chain of predicted centroids: the shape refinement's first trusted set
(``shape_sparsity``, Yang et al. 2017, Algorithm 1)."""

from __future__ import annotations

import numpy as np


def longest_decreasing_subsequence(values: np.ndarray) -> np.ndarray:
    """Indices of a longest strictly decreasing subsequence of ``values`` (1D), by O(n²) dynamic programming.

    Ties are not decreasing, so of equal values at most one is kept. Among equally long answers the one
    whose elements come earliest is returned (deterministic). Empty input gives an empty array.
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    length = np.ones(n, dtype=np.int64)
    parent = np.full(n, -1, dtype=np.int64)
    for i in range(1, n):
        earlier = np.nonzero(v[:i] > v[i])[0]
        if earlier.size:
            best = earlier[np.argmax(length[earlier])]  # argmax picks the earliest of equal lengths
            length[i] = length[best] + 1
            parent[i] = best
    end = int(np.argmax(length))
    chain = []
    while end >= 0:
        chain.append(end)
        end = int(parent[end])
    return np.asarray(chain[::-1], dtype=np.int64)
