"""The ``diffperception`` command.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches (modules are imported lazily so ``--help`` is fast).
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "COMMANDS"]

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("diffperception.demo", "offline demo on the shipped digits model: probes, zero-shot, plot"),
    "extract": ("diffperception.extract", "extract tap activations from images into a .safetensors file"),
    "train": ("diffperception.training.cli", "train a classification head on a frozen trunk"),
    "taps": ("diffperception.extract", "list the valid tap names of a diffusers model"),
    "export": ("diffperception.export.cli", "export to TorchScript / torch.export / ONNX / TensorRT"),
    "bench": ("diffperception.benchmarks.cli", "latency / memory / FLOP benchmarks"),
    "push": ("diffperception.modeling.push", "push a saved task model folder to the Hugging Face Hub"),
    "convert-adm": ("diffperception.convert_adm", "convert a guided-diffusion (ADM) checkpoint to a diffusers folder"),
    "evaluate": ("diffperception.evaluation.cli", "a saved model on a split: top-1 / top-5 (and kNN) of a classifier, or a named --benchmark"),
    "sweep": ("diffperception.evaluation.cli", "linear-probe accuracy per (tap, timestep): table and heatmap"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffperception`` console script."""
    parser = argparse.ArgumentParser(prog="diffperception", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            # a module serving several subcommands names its pairs add_<name>_arguments / run_<name>
            if hasattr(module, f"add_{name}_arguments"):
                getattr(module, f"add_{name}_arguments")(sub_parser)
                modules[name] = getattr(module, f"run_{name}")
            else:
                module.add_arguments(sub_parser)
                modules[name] = module.run
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(modules[args.command](args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
