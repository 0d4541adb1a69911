"""Checks of single values that fep-ha.cfg (`fepha.config`) and SEMODEL.db (`fepha.semodel.validate`) share,
so that an address or a host name means the same in both files, and a problem line quotes a value the same
bounded way in both.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

SHOWN_CHARS = 60  # a value longer than this is quoted cut, with its length (a 1 MB cell is one short line)

# RFC 1123 host name; RFC 3696 2: a top-level label is never all-numeric, since resolvers read a dotted
# all-numeric name as an IPv4 address in a legacy form ('1.2.3' connects to 1.2.0.3, '12345' to 0.0.48.57).
# \Z, not $: $ also matches before a final line break, and 'plc1\n' was taken for a host name.
_HOSTNAME = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")
_NUMERIC_LAST_LABEL = re.compile(r"(^|\.)[0-9]+\Z")


def shown(v: Any) -> str:
    """`repr(v)`, cut to SHOWN_CHARS characters with the full length said when longer."""
    text = repr(v)
    if len(text) <= SHOWN_CHARS:
        return text
    size = f"{len(v)} characters" if isinstance(v, str) else f"{len(v)} bytes" if isinstance(v, bytes) else "long"
    return f"{text[:SHOWN_CHARS]}... ({size})"


def ip_address(v: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `v` spells (strict: no leading zeros, no spaces), None when it is not one."""
    try:
        return ipaddress.ip_address(str(v))
    except ValueError:
        return None


def valid_ip(v: Any) -> bool:
    return ip_address(v) is not None


def valid_host(v: Any) -> bool:
    """An IP address, or a host name whose last label is not all-numeric."""
    return isinstance(v, str) and (valid_ip(v) or (bool(_HOSTNAME.match(v)) and not _NUMERIC_LAST_LABEL.search(v)))
