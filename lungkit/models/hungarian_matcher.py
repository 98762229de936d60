"""Hungarian matching of predicted queries to ground-truth masks (the "set" in set prediction).

Each image's Q queries are matched one-to-one to its K <= Q ground-truth masks by minimising a total cost; the
matched queries learn their target's class and mask, every other query learns "no object". The assignment is
solved with SciPy's ``linear_sum_assignment`` (as the official Mask2Former code does) on costs computed in the
graph; :func:`match_in_graph` wraps it with ``tf.numpy_function``, so the training step cannot be XLA-compiled as a
whole (the model turns ``jit_compile`` off and says why).

Matching costs (official ``HungarianMatcher``), on the same uniformly sampled points for every query and target of
an image:

- class: ``-p(target class)`` from the softmax over classes + no-object;
- mask: mean over points of the sigmoid binary cross-entropy between the query's logits and the target;
- dice: ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` with p the sigmoid of the logits;
- MaskFormer's variant uses a sigmoid focal loss as the mask cost (:func:`focal_cost_matrix`).
"""

from __future__ import annotations

import numpy as np
from keras import ops
from scipy.optimize import linear_sum_assignment


def assign(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of rows (queries) to columns (targets).

    Args:
        cost: (Q, K) finite costs.

    Returns:
        ``(rows, cols)``: min(Q, K) index pairs, sorted by row, as ``scipy.optimize.linear_sum_assignment``.

    Raises:
        ValueError: for a cost matrix that is not 2-D or holds NaN / infinite values (SciPy would fail obscurely).
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a (queries, targets) matrix, got shape {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("cost matrix holds NaN or infinite values: the model's outputs diverged")
    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.int64), cols.astype(np.int64)


def match_batch(costs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Match every image of a batch; padded target slots are left out.

    Args:
        costs: (B, Q, K) costs of query q for target slot k.
        valid: (B, K) True for target slots that hold a real target.

    Returns:
        (B, K) int32: the query matched to each target slot, -1 for padded slots.

    Raises:
        ValueError: when an image has more real targets than queries (some would stay unmatched).
    """
    costs = np.asarray(costs, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    batch, queries, slots = costs.shape
    matched = np.full((batch, slots), -1, dtype=np.int32)
    for image in range(batch):
        columns = np.flatnonzero(valid[image])
        if columns.size == 0:
            continue
        if columns.size > queries:
            raise ValueError(f"image {image} has {columns.size} targets but the model has only {queries} queries")
        rows, cols = assign(costs[image][:, columns])
        matched[image, columns[cols]] = rows
    return matched


def match_in_graph(costs, valid):
    """:func:`match_batch` as a graph op (``tf.numpy_function``); the result carries no gradient.

    Args:
        costs: (B, Q, K) float tensor.
        valid: (B, K) bool tensor.

    Returns:
        (B, K) int32 tensor of matched query indices, -1 for padded slots.
    """
    import tensorflow as tf

    matched = tf.numpy_function(match_batch, [tf.cast(costs, tf.float32), valid], tf.int32, stateful=False)
    return tf.reshape(matched, tf.shape(valid))


def class_cost_matrix(class_logits, target_classes):
    """``-p(target class)`` per (query, target slot).

    Args:
        class_logits: (B, Q, C + 1) logits (last = no object).
        target_classes: (B, K) int class ids of the target slots (any value for padded slots).

    Returns:
        (B, Q, K) float32.
    """
    probabilities = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)
    index = ops.broadcast_to(
        ops.cast(target_classes, "int32")[:, None, :],
        (ops.shape(probabilities)[0], ops.shape(probabilities)[1], ops.shape(target_classes)[1]),
    )
    return -ops.take_along_axis(probabilities, index, axis=-1)


def bce_cost_matrix(point_logits, point_targets):
    """Mean sigmoid binary cross-entropy over points between every query and every target.

    Args:
        point_logits: (B, Q, P) query mask logits at P points.
        point_targets: (B, K, P) target values (0/1) at the same points.

    Returns:
        (B, Q, K) float32.
    """
    logits = ops.cast(point_logits, "float32")
    targets = ops.cast(point_targets, "float32")
    num_points = ops.cast(ops.shape(logits)[-1], "float32")
    # BCE(x, 1) = softplus(-x) and BCE(x, 0) = softplus(x), so the pairwise sum is two matrix products
    positive = ops.softplus(-logits)
    negative = ops.softplus(logits)
    cost = ops.einsum("bqp,bkp->bqk", positive, targets) + ops.einsum("bqp,bkp->bqk", negative, 1.0 - targets)
    return cost / num_points


def focal_cost_matrix(point_logits, point_targets, alpha: float = 0.25, gamma: float = 2.0):
    """Mean sigmoid focal loss over points between every query and every target (MaskFormer's mask cost).

    Args:
        point_logits: (B, Q, P) logits.
        point_targets: (B, K, P) 0/1 targets.
        alpha: weight of the positive class (negatives get ``1 - alpha``).
        gamma: focusing exponent.

    Returns:
        (B, Q, K) float32.
    """
    logits = ops.cast(point_logits, "float32")
    targets = ops.cast(point_targets, "float32")
    probabilities = ops.sigmoid(logits)
    focal_positive = alpha * (1.0 - probabilities) ** gamma * ops.softplus(-logits)
    focal_negative = (1.0 - alpha) * probabilities**gamma * ops.softplus(logits)
    cost = ops.einsum("bqp,bkp->bqk", focal_positive, targets) + ops.einsum(
        "bqp,bkp->bqk", focal_negative, 1.0 - targets
    )
    return cost / ops.cast(ops.shape(logits)[-1], "float32")


def dice_cost_matrix(point_logits, point_targets):
    """``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` between every query and every target.

    Args:
        point_logits: (B, Q, P) logits.
        point_targets: (B, K, P) 0/1 targets.

    Returns:
        (B, Q, K) float32.
    """
    probabilities = ops.sigmoid(ops.cast(point_logits, "float32"))
    targets = ops.cast(point_targets, "float32")
    numerator = 2.0 * ops.einsum("bqp,bkp->bqk", probabilities, targets)
    denominator = ops.sum(probabilities, axis=-1)[:, :, None] + ops.sum(targets, axis=-1)[:, None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)
