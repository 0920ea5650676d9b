"""`kuma-dp`: the data-plane agent. Its issue (register a dataplane, run and supervise Envoy) is next in
line; until then the command says so instead of pretending to work."""

from __future__ import annotations

import sys
from importlib.metadata import version as dist_version

NOT_BUILT = ("kuma-dp is not built yet in this version of kuma-vm: the agent (bootstrap, Envoy supervision, "
             "DNS) arrives with its issue. The control plane (kuma-cp) and kumactl work today.")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["version"]:
        print(f"kuma-dp {dist_version('kuma-vm')}")
        return 0
    print(NOT_BUILT, file=sys.stderr)
    return 2


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
