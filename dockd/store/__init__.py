"""The store: the only place that speaks SQL.

``db`` holds the connection, the migrations and the transition primitives
(:class:`State`); ``rows`` the typed rows the rest of dockd sees. Other modules in this
package group the queries by subject (dockings, clips, deliveries, audit, status, ...);
code outside ``dockd.store`` calls their functions and never writes SQL itself.
"""

from .db import (
    MIGRATIONS,
    SCHEMA_VERSION,
    State,
    decode_row,
    dumps,
    encode_path,
    iso,
    parse_iso,
    utcnow,
)
from .readonly import Reader, ReadOnlyState, open_readonly, require_database

__all__ = [
    "MIGRATIONS", "SCHEMA_VERSION", "State", "decode_row", "dumps", "encode_path", "iso",
    "ReadOnlyState", "Reader", "open_readonly", "parse_iso", "require_database", "utcnow",
]
