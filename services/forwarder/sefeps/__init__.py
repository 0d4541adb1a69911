"""sefeps: the project's own SCADA forwarding protocol (docs/sefeps.md): `codec` (pure) and `server`."""

from fep_forwarder.sefeps.server import SefepsServer

__all__ = ["SefepsServer"]
