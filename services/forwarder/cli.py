"""fep-forwarder: serve the forwarding RTUs of this node (`--check`: exit 0 only with a fresh heartbeat)."""

from __future__ import annotations

from fepha import worker


def _runner() -> worker.Runner:
    from fep_forwarder.app import run

    return run


def main(argv: list[str] | None = None) -> int:
    return worker.main("fep-forwarder", __doc__, ["forwarder"], _runner, argv)


if __name__ == "__main__":
    raise SystemExit(main())
