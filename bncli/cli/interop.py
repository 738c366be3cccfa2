"""``bncli export`` and ``bncli import``: Keras model files out and in.

No Keras at run time: the files are written and read as zip, JSON and HDF5
(:mod:`bncli.keras_compat.files`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bncli.cli.options import NameList, debug_option, layer_options


@click.command(short_help="Write a state as a Keras model or weights file.")
@click.argument("state", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@debug_option
def export(state: str, output: str, overwrite: bool, debug: bool) -> None:
    """Write STATE as a Keras 3 model (OUT.keras) or weights file (OUT.weights.h5).

    The model is an Input of the state's per-sample shape and one stock
    BatchNormalization with the state's config and weights:
    keras.saving.load_model loads it with no bncli installed, and it
    predicts what `bncli transform` writes. OUT.weights.h5 is that model's
    weights file, for model.load_weights.

    \b
    Example:
      bncli export state.h5 normalizer.keras
      bncli export state.h5 normalizer.weights.h5
    """
    from bncli.cli.render import warn
    from bncli.errors import UsageError
    from bncli.io.outputs import check_output
    from bncli.keras_compat.files import write_keras_model, write_weights_h5
    from bncli.layer import load

    name = Path(output).name.lower()
    if not (name.endswith(".keras") or name.endswith(".weights.h5")):
        raise UsageError(f"{output}: export writes OUT.keras or OUT.weights.h5")
    checked = check_output(output, [state], overwrite, streams=False)
    assert checked.path is not None
    target = checked.path
    layer = load(state)
    config = layer.get_config()
    if config["synchronized"]:
        warn(
            "synchronized=True is exported as false: Keras refuses it on every "
            "backend but TensorFlow, and inference is the same either way"
        )
        config["synchronized"] = False
    variables = layer.to_state().variables
    if name.endswith(".keras"):
        sample_shape = tuple(None if d < 0 else d for d in layer.sample_shape)
        write_keras_model(target, config, variables, sample_shape)
    else:
        write_weights_h5(target, config, variables)


@click.command(
    name="import", short_help="Read a Keras BatchNormalization layer into a state."
)
@click.argument("model", type=click.Path(exists=False))
@click.option(
    "--layer",
    "layer_name",
    default=None,
    help="The layer's name (needed when the model has several).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The state file to write.",
)
@click.option(
    "--features",
    type=NameList(),
    default=None,
    help="Names of the channels (a,b,c), so tables select them by name.",
)
@click.option(
    "--input-shape",
    type=NameList(),
    default=None,
    help="Per-sample input shape (8,8,3) where the file does not tell it.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@layer_options
@debug_option
def import_(
    model: str,
    layer_name: str | None,
    output: str,
    overwrite: bool,
    features: list[str] | None,
    input_shape: list[str] | None,
    debug: bool,
    **options: Any,
) -> None:
    """Read a BatchNormalization layer of MODEL into a new state.

    MODEL is a Keras 3 .keras archive, a .weights.h5 file, or a Keras 2 /
    tf.keras legacy .h5 file. Without --layer the model's only
    BatchNormalization layer is taken. A layer bncli cannot use (renorm=True,
    ...) is refused, naming the reason; the file's other layers can still be
    imported. A weights-only file has no config: the layer options
    (--momentum, --epsilon, --center/--scale, ...) then say what it was, and
    default to Keras's.

    \b
    Example:
      bncli import model.keras --layer bn_first -o bn_first.h5
      bncli import weights.h5 --momentum 0.9 -o state.h5
    """
    import numpy as np

    from bncli.errors import UsageError
    from bncli.io.outputs import check_output
    from bncli.keras_compat.files import read_batchnorm_layers, select_layer
    from bncli.layer import BatchNormalization
    from bncli.state import lock

    checked = check_output(output, [model], overwrite, streams=False)
    assert checked.path is not None
    target = checked.path
    given = {k: v for k, v in options.items() if v is not None and k != "seed"}
    layers = read_batchnorm_layers(
        model, center=given.get("center"), scale=given.get("scale")
    )
    found = select_layer(layers, layer_name, path=model)
    if found.config is not None:
        clash = sorted(set(given) - {"axis"} if found.config else given)
        if clash:
            raise UsageError(
                f"{model}: the file has the layer's config; --{clash[0].replace('_', '-')} "
                "applies only to weights-only files"
            )
        # renorm=True never gets here: select_layer raised the layer's problem.
        layer = BatchNormalization.from_config(dict(found.config))
    else:
        layer = BatchNormalization(**given)
    channels = len(found.variables["moving_mean"])
    shape = _sample_shape(found.input_shape, input_shape, channels, layer, model)
    names = features if features is not None else None
    if names is not None and len(names) != channels:
        raise UsageError(f"--features: {len(names)} names for {channels} channels")
    layer.build(shape, names, "table" if names is not None else "array")
    if layer.scale:
        layer.gamma = np.asarray(found.variables["gamma"], dtype=np.float64)
    if layer.center:
        layer.beta = np.asarray(found.variables["beta"], dtype=np.float64)
    layer.moving_mean = np.asarray(found.variables["moving_mean"], dtype=np.float64)
    layer.moving_variance = np.asarray(
        found.variables["moving_variance"], dtype=np.float64
    )
    with lock(target):
        layer.save(target)


def _sample_shape(
    from_file: tuple[int | None, ...] | None,
    given: list[str] | None,
    channels: int,
    layer: Any,
    model: str,
) -> tuple[int, ...]:
    """The per-sample shape: --input-shape, else the file's, else (C,)."""
    from bncli.errors import UsageError

    if given is not None:
        try:
            shape = tuple(int(d) for d in given)
        except ValueError as e:
            raise UsageError(
                f"--input-shape: expected integers, got {','.join(given)}"
            ) from e
    elif from_file is not None:
        shape = tuple(-1 if d is None else int(d) for d in from_file[1:])
    else:
        shape = (channels,)
    ndim = len(shape) + 1
    axis = layer.axis + ndim if layer.axis < 0 else layer.axis
    if not 1 <= axis < ndim or shape[axis - 1] not in (channels, -1):
        raise UsageError(
            f"{model}: input shape {shape} does not have the layer's {channels} channels "
            f"on axis {layer.axis}; give --input-shape"
        )
    return (*shape[: axis - 1], channels, *shape[axis:])
