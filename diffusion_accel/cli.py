"""The ``diffusion-accel`` command line.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; :data:`COMMANDS` maps the sub-command name to that module, so a new
command is one line here.

Example:
    $ diffusion-accel --help
    $ diffusion-accel demo --out demo-output
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "COMMANDS", "json_object_option"]

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("diffusion_accel.demo", "generate with and without acceleration on the bundled model"),
    "info": ("diffusion_accel.info", "list supported models and registered techniques"),
    "eval": ("diffusion_accel.eval.cli", "evaluate acceleration configs: quality, speed-up, MACs, Pareto report"),
    "search": ("diffusion_accel.search.cli", "search cache schedules (NSGA-II): a Pareto frontier"),
}


def json_object_option(text: str, flag: str) -> dict:
    """The JSON object given to a command-line option ``flag`` (e.g. ``--call-kwargs``); one clear error otherwise."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object.")
    return value


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (its options are added), so that
    ``diffusion-accel --help`` and ``--version`` load neither torch nor diffusers."""
    parser = argparse.ArgumentParser(
        prog="diffusion-accel",
        description="Training-free acceleration for diffusers pipelines: caching, quantization, "
        "sparse attention, and honest quality/latency evaluation.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"diffusion-accel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=module.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def _command(argv: list[str]) -> str | None:
    """The sub-command of ``argv``: its first word that is not an option (the top-level options
    take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"diffusion-accel {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
