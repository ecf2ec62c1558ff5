"""``diffperception-deploy``: the kit's command (``run`` and ``build-engine``).

Usage::

    diffperception-deploy run build/model.onnx images/*.png [--out features.npz]
    diffperception-deploy build-engine build/model.onnx --fp16 --max-batch 8
    python -m diffperception_deploy run ...            # the same, without the console script
"""

from __future__ import annotations

import sys
from pathlib import Path

COMMANDS = {"run": "run an .onnx file or TensorRT engine on images / .npy latents",
            "build-engine": "build a TensorRT engine and its sidecar from an .onnx file"}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``run`` / ``build-engine``; returns the exit status (2 on a usage error).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    script = "diffperception-deploy"
    name = script if Path(sys.argv[0]).stem == script else f"python -m {__package__ or 'export'}"
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {command:<13} {text}" for command, text in COMMANDS.items())
        stream = sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr
        print(f"usage: {name} {{{','.join(COMMANDS)}}} ...\n\ncommands:\n{listing}", file=stream)
        return 0 if stream is sys.stdout else 2
    command, rest = argv[0], argv[1:]
    prog = f"{name} {command}"
    if command == "run":
        from .run import main as run_main

        return run_main(rest, prog=prog)
    from .build_engine import main as build_main

    return build_main(rest, prog=prog)


if __name__ == "__main__":
    raise SystemExit(main())
