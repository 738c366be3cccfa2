"""What a Keras file's BatchNormalization layer is to bncli, and the bounds on reading one.

:class:`KerasBatchNorm` is the record every reader returns; the constants name
the variables, the layer classes read, and the limits that keep a hostile
file's cost bounded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from bncli.errors import (
    UnsupportedLayerError,
)

__all__ = [
    "BATCHNORM_CLASSES",
    "CLASS_ALIASES",
    "CONFIG_MAX_BYTES",
    "DEFAULT_INITIALIZERS",
    "KERAS_VERSION_WRITTEN",
    "MAX_DEPTH",
    "MAX_GROUPS",
    "MAX_RANK",
    "POLICY_CLASSES",
    "POLICY_NAMES",
    "RENORM_KEYS",
    "RENORM_ORDER",
    "RENORM_VARIABLES",
    "SPOOL_BYTES",
    "VARIABLE_NAMES",
    "ZIP_BOMB_FLOOR_BYTES",
    "ZIP_MAX_EXPANSION",
    "KerasBatchNorm",
    "Shape",
]


#: The BatchNormalization variables, in the order Keras saves them
#: (trainable first): gamma only if scale, beta only if center.
VARIABLE_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")

#: Variables that only a renormalizing layer has, in the order Keras creates
#: them (after the four above).
RENORM_ORDER = ("moving_stddev", "renorm_mean", "renorm_stddev")

#: The same, as a set.
RENORM_VARIABLES = frozenset(RENORM_ORDER)

#: Layer classes read as BatchNormalization (Keras 2's synchronized variant too).
BATCHNORM_CLASSES = frozenset({"BatchNormalization", "SyncBatchNormalization"})

#: The Keras version whose layout the writers reproduce.
KERAS_VERSION_WRITTEN = "3.15.1"

#: Largest config.json (or model_config attribute) read, in bytes.
CONFIG_MAX_BYTES = 64 << 20

#: A zip member declaring more than this many bytes, and more than
#: ``ZIP_MAX_EXPANSION`` times what it stores, is taken for a bomb (as Keras's
#: own ``_reject_zip_bomb`` does).
ZIP_BOMB_FLOOR_BYTES = 1 << 28

#: See ZIP_BOMB_FLOOR_BYTES.
ZIP_MAX_EXPANSION = 100

#: A weights member is decompressed into memory up to this size, else into a
#: temporary file.
SPOOL_BYTES = 64 << 20

#: Groups a weights file's walk may visit (an EfficientNetB7's weights file
#: holds 2,674 groups and datasets in all).
MAX_GROUPS = 20_000

#: Nested models deeper than this are refused (a crafted config could recurse).
MAX_DEPTH = 64

#: Input shapes of higher rank are refused.
MAX_RANK = 32

#: Dtype policy names Keras accepts for a BatchNormalization layer.
POLICY_NAMES = frozenset(
    {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"}
)

#: Dtype policy classes, by the names Keras 2 and 3 serialize.
POLICY_CLASSES = frozenset({"DTypePolicy", "FloatDTypePolicy", "Policy"})

#: Keras's initializers of a BatchNormalization layer, by config key.
DEFAULT_INITIALIZERS = {
    "beta_initializer": "Zeros",
    "gamma_initializer": "Ones",
    "moving_mean_initializer": "Zeros",
    "moving_variance_initializer": "Ones",
}

#: Config keys of batch renormalization (refused, and never exported).
RENORM_KEYS = ("renorm", "renorm_clipping", "renorm_momentum")

#: Keras 3 class names whose snake-case spelling does not follow from a name.
CLASS_ALIASES = {"Orthogonal": "OrthogonalInitializer"}

Shape = tuple[int | None, ...]


@dataclasses.dataclass
class KerasBatchNorm:
    """One BatchNormalization layer found in a Keras file.

    Attributes:
        name: The user-facing layer name (``layer.name``).
        path: Where the layer lives in the file: its weights path in a Keras 3
            weights file (``"layers/batch_normalization_1"``), or its group in a
            legacy ``.h5`` (``"model_weights/bn_k2"``).
        config: The layer's Keras 3.15 ``get_config()`` dict, normalized (see
            :func:`normalize_batchnorm_config`); None when the file holds no
            config (a bare ``.weights.h5`` or a Keras 2 weights-only file).
        variables: ``"gamma"`` (if scale), ``"beta"`` (if center),
            ``"moving_mean"`` and ``"moving_variance"``, each a 1-D array of
            shape ``(C,)`` in its stored dtype.
        input_shape: The layer's input shape including the batch dimension,
            e.g. ``(None, 5)``, when the file tells it; dimensions the file does
            not pin down (after a convolution in a legacy file) are None.
        problem: Why bncli cannot use the layer (renorm, virtual batches,
            variables a weights-only file leaves ambiguous...), or None. An
            unsupported layer is listed but not imported: its ``config`` is
            None and its ``variables`` are what the file holds, by the names
            the file gives or implies (``"moving_stddev"``), else by position
            (``"0"``, ``"1"``...); all are validated 1-D float arrays of one
            length.
        file_config: For an unsupported layer, its config as found in the
            file (not normalized: shown, never used); None otherwise.
    """

    name: str
    path: str
    config: dict[str, Any] | None
    variables: dict[str, np.ndarray]
    input_shape: Shape | None
    problem: UnsupportedLayerError | None = None
    file_config: dict[str, Any] | None = None

    @property
    def channels(self) -> int:
        """C, the length of every variable (0 if there is none)."""
        return next((len(array) for array in self.variables.values()), 0)
