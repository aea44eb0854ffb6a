"""``python -m bench NAME [options]``: run one benchmark by name."""

from __future__ import annotations

import argparse
from types import ModuleType

from . import agents, catchup, connections, peers, publish, replies, rooms, scale, stream

BENCHMARKS: dict[str, ModuleType] = {
    "publish": publish,
    "catchup": catchup,
    "peers": peers,
    "stream": stream,
    "agents": agents,
    "scale": scale,
    "replies": replies,
    "rooms": rooms,
    "connections": connections,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="roomcast benchmarks: one JSON line per measurement"
    )
    names = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, module in BENCHMARKS.items():
        summary = (module.__doc__ or name).strip().splitlines()[0]
        sub = names.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    BENCHMARKS[args.name].run(args)


if __name__ == "__main__":
    main()
