"""modbus_trains: forwarding points served to Modbus TCP masters (docs/modbus_trains.md)."""

from fep_forwarder.modbus_trains.server import ModbusTrainsServer

__all__ = ["ModbusTrainsServer"]
