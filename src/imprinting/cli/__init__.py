"""The ``imprint`` command: one module per group of commands, each thin over the library.

  models.py     create, add-class, predict, info, train
  reproduce.py  transfer and ``imprint reproduce`` (the paper's tables and figures)
  serve.py      serve (the HTTP service)
  export.py     export (ONNX and the classes file for the lite runtime)
  evaluate.py   evaluate (accuracy on a labelled folder), calibrate (scale and unknown threshold)
  examples.py   examples list/remove/rename (a service's store, without HTTP)

Each module is imported when one of its commands is used (``COMMANDS``), and none imports
PyTorch (or numpy, PIL, the service's dependencies) at module level: those are imported in
the command bodies, so ``imprint --help``, ``imprint X --help`` and a bad command line answer
at once (``tests/test_cli_startup.py``, ``benchmarks/cli_startup.py``).
"""

from __future__ import annotations

import click

from imprinting.cli.common import Group

# Every command: where it is defined, and the summary that ``imprint --help`` lists (None: the
# first sentence of its own help, read from its module). ``transfer``'s help is data of the
# experiment registry, which imports PyTorch; its summary is kept here (tests/test_cli_startup.py
# checks that it matches).
COMMANDS: dict[str, tuple[str, str | None]] = {
    "create": ("imprinting.cli.models:create", None),
    "add-class": ("imprinting.cli.models:add_class", None),
    "predict": ("imprinting.cli.models:predict", None),
    "info": ("imprinting.cli.models:info", None),
    "train": ("imprinting.cli.models:train_command", None),
    "evaluate": ("imprinting.cli.evaluate:evaluate", None),
    "calibrate": ("imprinting.cli.evaluate:calibrate_command", None),
    "transfer": ("imprinting.cli.reproduce:transfer", "Transfer learning by imprinting on Flowers-102 (paper Table 3)."),
    "reproduce": ("imprinting.cli.reproduce:reproduce", None),
    "serve": ("imprinting.cli.serve:serve", None),
    "examples": ("imprinting.cli.examples:examples", None),
    "export": ("imprinting.cli.export:export", None),
}


@click.group(cls=Group, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
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
