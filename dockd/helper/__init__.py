"""The privileged side of dockd: ``dockd-mount``, a tiny root helper (see docs/privileges.md)."""
