"""``bncli export`` and ``bncli import``: Keras model files out and in.

No Keras at run time: the files are written and read as zip, JSON and HDF5
(:mod:`bncli.keras_compat.files`).
"""

from __future__ import annotations

from typing import Any

import click

from bncli.cli.options import NameList, debug_option, layer_options


@click.command(short_help="Write a state as a Keras model or weights file.")
@click.argument("state", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option(
    "--into",
    "into",
    default=None,
    type=click.Path(dir_okay=False),
    metavar="MODEL",
    help="Write the state into a layer of this model (.keras, .weights.h5 or .h5): "
    "OUTPUT is a copy of it in which only that layer's variables change.",
)
@click.option(
    "--layer",
    "layer_name",
    default=None,
    help="With --into: the layer's name or path, as inspect lists them.",
)
@debug_option
def export(
    state: str,
    output: str,
    overwrite: bool,
    into: str | None,
    layer_name: str | None,
    debug: bool,
) -> None:
    """Write STATE as a Keras 3 model (OUT.keras) or weights file (OUT.weights.h5).

    The model is an Input of the state's per-sample shape and one stock
    BatchNormalization with the state's config and weights:
    keras.saving.load_model loads it with no bncli installed, and it
    predicts what `bncli transform` writes. OUT.weights.h5 is that model's
    weights file, for model.load_weights.

    With --into MODEL --layer NAME, OUTPUT is instead a copy of MODEL in which
    layer NAME holds the state's moving statistics, gamma and beta (in the
    layer's own dtype); nothing else changes. OUTPUT may be MODEL itself with
    --overwrite. The state must fit the layer (channels, axis, center, scale,
    epsilon).

    \b
    Example:
      bncli export state.h5 normalizer.keras
      bncli export state.h5 normalizer.weights.h5
      bncli export bn3.h5 model-fixed.keras --into model.keras --layer bn_3
    """
    from bncli.cli.render import warn
    from bncli.workflows import export_state

    done = export_state(
        state, output, overwrite=overwrite, into=into, layer_name=layer_name
    )
    for note in done.notes:
        warn(note)


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
    from bncli.workflows import import_state

    import_state(
        model,
        output,
        layer_name,
        overwrite=overwrite,
        features=features,
        input_shape=input_shape,
        **options,
    )
