"""fep-acquirer: run this node's acquirer; `--check` for a container health check."""

from __future__ import annotations

from fepha import worker


def _runner() -> worker.Runner:
    from fep_acquirer.app import run

    return run


def main(argv: list[str] | None = None) -> int:
    return worker.main("fep-acquirer", __doc__, ["acquirer"], _runner, argv)


if __name__ == "__main__":
    raise SystemExit(main())
