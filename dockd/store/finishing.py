"""The finisher's start-up questions that the docking and delivery modules do not ask.

A docking is signed, then its clips delivered early (to make room, or while it still
copied) become ``delivered`` (``dockd.delivery.early.promote_delivered``) in a second
transaction. A crash between the two leaves such clips ``signed`` with every copy in
place: the delivery stage has nothing left to send for them and nothing promotes them, so
the docking never completes and the recorder is never cleared. :func:`signed_with_copies`
finds those dockings so that the finisher promotes them again at start-up.
"""

from __future__ import annotations

from .db import State


def signed_with_copies(state: State) -> list[int]:
    """Signed dockings with a clip still ``signed`` that has a delivered copy somewhere."""
    return [int(r["docking_id"]) for r in state.query(
        "SELECT DISTINCT c.docking_id FROM clips c JOIN dockings d ON d.id = c.docking_id "
        "JOIN deliveries v ON v.clip_id = c.id WHERE d.state = 'signed' AND "
        "c.state = 'signed' AND v.state = 'delivered' ORDER BY c.docking_id")]
