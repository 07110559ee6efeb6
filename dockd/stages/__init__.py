"""A docking's path as stages, each with one owner.

* :mod:`.register` — identify the recorder and register its clips (the port's job thread).
* :mod:`.offload` — copy only: each clip read once from the recorder into staging, waiting
  for room when staging is full (the port's job thread, one per docked port).
* :mod:`.check` — probe (in batches) and check copied clips; the docking's continuity and
  spoken notes (R1, R2).
* :mod:`.sign` — the signed manifest, the docking's commit marker.
* :mod:`.finisher` — the finisher threads: probe and check clips as they arrive while the
  recorder still copies; continuity, notes and signing once the offload ended. One finisher
  owns a docking at a time.
* :mod:`.deliver` — one long-lived delivery worker per target: checked and signed clips,
  then each docking's manifest last (its commit marker).
* :mod:`.clear` — erase verified-delivered clips from the recorder; health re-reads.
* :mod:`.supervisor` — the daemon's port table (docked recorders, their jobs, retries):
  owned by the supervisor loop alone, other threads ask it through a queue.

:class:`dockd.pipeline.Pipeline` stays the facade the CLI and the tests call.
"""
