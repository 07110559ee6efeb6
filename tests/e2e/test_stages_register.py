"""The register stage (#13): identify the recorder, open or resume its docking, register
its clips (resumed, grown, taken over from an ended docking, or known already)."""

from __future__ import annotations

from typing import Any

from dockd.config import Config
from dockd.daemon import build_pipeline
from dockd.ingest.probe import Prober
from dockd.stages import register
from dockd.store import State


def test_a_restart_resumes_the_docking_and_another_port_takes_over(cfg: Config,
                                                                   make_recorder: Any) -> None:
    rec = make_recorder(cfg, segments=2)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d1, known = register.begin_docking(pipe, "port-01", rec)
        assert known == [] and len(st.clips_of(d1)) == 2
        again, _ = register.begin_docking(pipe, "port-01", rec)  # the daemon restarted
        assert again == d1 and len(st.query("SELECT * FROM clips")) == 2
        # the same tree now answers on another port: the recorder moved, not a twin
        d2, _ = register.begin_docking(pipe, "port-02", rec)
        assert d2 != d1
        assert st.docking(d1)["state"] == "interrupted"
        assert st.docking(d1)["undocked_at"]
        assert st.docking(d2)["clips_total"] == 2
        assert [c["docking_id"] for c in st.clips_of(d2)] == [d2, d2]  # taken over
        assert {c["first_docking_id"] for c in st.clips_of(d2)} == {d1}  # deadline kept
        assert {c["deadline_at"] for c in st.clips_of(d2)} == {st.docking(d1)["deadline_at"]}
        assert st.query("SELECT count(*) AS n FROM recorder_health")[0]["n"] == 3


def test_a_clip_still_growing_is_registered_with_its_size_now(cfg: Config,
                                                             make_recorder: Any) -> None:
    rec = make_recorder(cfg, segments=2)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, _ = register.begin_docking(pipe, "port-01", rec)
        clip = sorted(rec.rglob("*.MP4"))[0]
        with clip.open("ab") as f:
            f.write(b"\0" * 1000)  # the recorder was still writing it
        again, known = register.begin_docking(pipe, "port-01", rec)
        assert again == d and known == []
        sizes = {c["safe_name"]: c["size"] for c in st.clips_of(d)}
        assert sizes[clip.name] == clip.stat().st_size and len(sizes) == 2
        assert st.docking(d)["bytes_total"] == sum(p.stat().st_size
                                                   for p in rec.rglob("*.MP4"))


def test_clips_handled_before_are_returned_as_known(cfg: Config, make_recorder: Any) -> None:
    rec = make_recorder(cfg, segments=2)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d1 = pipe.run_docking("port-01", rec).docking_id
        pipe.deliver_pending(ignore_backoff=True)
        pipe.undocked("port-01")
        d2, known = register.begin_docking(pipe, "port-01", rec)
        assert d2 != d1 and st.clips_of(d2) == []
        assert sorted(e.safe_name for e, _ in known) == sorted(
            c["safe_name"] for c in st.clips_of(d1))
        for _e, prior in known:
            assert prior["docking_id"] == d1
            assert list(prior["known"].values()) == [(prior["id"], "delivered")]
        out = pipe.offload(d2, rec, known)
        assert (out.copied, out.skipped_known) == (0, 2)
