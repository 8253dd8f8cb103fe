"""`hybrid-mpsenet` command line: convert original checkpoints, describe models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from .configuration_hybrid_mpsenet import PRESETS, HybridMPSENetConfig
from .convert import convert_original_checkpoint
from .modeling_hybrid_mpsenet import HybridMPSENetModel


def _convert(args: argparse.Namespace) -> int:
    model = convert_original_checkpoint(args.checkpoint, args.config, variant=args.variant, output_dir=args.output)
    print(f"Converted {args.checkpoint} ({model.num_parameters():,} parameters) to {args.output}")
    return 0


def _describe(config: HybridMPSENetConfig) -> dict:
    groups = {
        "shared": (config.num_shared_blocks, config.shared_block_type),
        "magnitude": (config.num_magnitude_blocks, config.magnitude_block_type),
        "phase": (config.num_phase_blocks, config.phase_block_type),
    }
    return {
        "parameters": HybridMPSENetModel(config).num_parameters(),
        "blocks": {name: f"{count} x {kind}" for name, (count, kind) in groups.items() if count},
        "fusion": config.fusion,
        "ts_transformer_axes": config.ts_transformer_axes,
        "sampling_rate": config.sampling_rate,
    }


def _info(args: argparse.Namespace) -> int:
    if args.model is None:
        info = {name: _describe(HybridMPSENetConfig.from_preset(name)) for name in PRESETS}
    elif args.model in PRESETS:
        info = {args.model: _describe(HybridMPSENetConfig.from_preset(args.model))}
    else:
        info = {args.model: _describe(HybridMPSENetConfig.from_pretrained(args.model))}
    print(json.dumps(info, indent=2))
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "convert": ("convert an original MP-SENet / hybrid generator checkpoint to a save_pretrained folder", _convert),
    "info": ("print the architecture and parameter count of the presets or of a model", _info),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid-mpsenet", description="Hybrid MP-SENet speech enhancement.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, (help_text, _) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)

    convert = sub.choices["convert"]
    convert.add_argument("checkpoint", help="original generator checkpoint ({'generator': state_dict})")
    convert.add_argument("output", help="folder to write (safetensors + config + preprocessor config)")
    convert.add_argument("--config", help="the original repository's config.json (STFT settings, channels)")
    convert.add_argument("--variant", default="auto", choices=["auto", *PRESETS], help="architecture (default: auto)")

    info = sub.choices["info"]
    info.add_argument("model", nargs="?", help="a preset name, a model folder or a Hub id (default: all presets)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command is None:
        parser.error(f"choose a command: {', '.join(COMMANDS)}")
    try:
        return COMMANDS[args.command][1](args)
    except (ValueError, OSError) as error:
        print(f"hybrid-mpsenet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
