"""The ``imprint`` command: one module per group of commands, each thin over the library.

  models.py     create, add-class, predict, info, train
  reproduce.py  transfer and ``imprint reproduce`` (the paper's tables and figures)
  serve.py      serve (the HTTP service)
  export.py     export (ONNX and the classes file for the lite runtime)
  evaluate.py   evaluate (accuracy on a labelled folder), calibrate (scale and unknown threshold)
  examples.py   examples list/remove/rename (a service's store, without HTTP)
"""

from __future__ import annotations

import click

from imprinting.cli.common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imprinting")
def main() -> None:
    """Teach a trained image classifier new classes from one or a few images.

    \b
    imprint create model.safetensors                   an ImageNet-pretrained model, no classes
    imprint add-class model.safetensors --name cat cats/   imprint a class from a few images
    imprint predict model.safetensors photo.jpg        top-k classes with scores
    imprint evaluate model.safetensors test/           accuracy on a folder of class folders
    imprint info model.safetensors                     what the model knows
    imprint transfer --data-root ../shared/data        the paper's Table 3 on Flowers-102
    """
    from imprinting.engines.allocator import keep_freed_memory

    keep_freed_memory()  # glibc keeps freed blocks: no page faults per batch (training, extraction)


from imprinting.cli import evaluate, examples, export, models, reproduce, serve  # noqa: E402

for _module in (models, evaluate, reproduce, serve, examples, export):
    for _command in _module.COMMANDS:
        main.add_command(_command)
