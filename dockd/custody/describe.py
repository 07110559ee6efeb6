"""The written evidence description of an export (R12), in Chinese and English, as HTML
and PDF: maker, extractor, extraction time and place, recorder, officer, case labels,
continuity findings and the file list with SHA-256.

The PDF is drawn with fpdf2 (pure Python) in a CJK font found on the system
(``DOCKD_CJK_FONT`` overrides; Debian's ``fonts-wqy-microhei`` is the default), so no
browser or office suite is needed on the dock.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import DockdError
from ..integrity.manifest import parse_manifest
from ..status.report import report_data
from ..store import State
from .labels import current_labels

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)


def _sections(state: State, doc: dict[str, Any],
              dockings: Sequence[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(heading, [(label, value)]) blocks shared by the HTML and the PDF."""
    out: list[tuple[str, list[tuple[str, str]]]] = [(
        "导出审批 Export approval", [
            ("申请人 Requester", doc["requester"]),
            ("批准人 Approver", doc["approver"]),
            ("事由 Reason", doc["reason"]),
            ("复制人 Copied by", doc["exported_by"]),
            ("复制时间 Copy time (UTC)", doc["created_at"]),
            ("复制地点 Copy place", doc["place"]),
        ])]
    for d in dockings:
        m = parse_manifest(bytes(d["manifest"]))
        rec = m["recorder"]
        labels = current_labels(state, d["id"])
        rep = report_data(state, docking_id=d["id"], limit=1)["dockings"]
        r = rep[0] if rep else {"gaps": [], "findings": []}
        officer = " ".join(x for x in (rec.get("officer_no"), rec.get("officer_name")) if x)
        rows = [
            ("制作人 Maker (recording officer)", officer or "-"),
            ("单位 Unit", " ".join(x for x in (rec.get("unit_no"), rec.get("unit_name")) if x)
             or "-"),
            ("执法记录仪 Recorder", f"{rec.get('serial')} {rec.get('vendor') or ''} "
                                  f"{rec.get('model') or ''}".strip()),
            ("提取人 Extractor", f"dockd docking station {m['dock']} (automatic, port "
                                 f"{m['port']}); copy by {doc['exported_by']}"),
            ("提取时间 Extraction time (UTC)", m["docking"]["docked_at"]),
            ("提取地点 Extraction place", doc["place"] if doc["place"] == m["dock"]
             else f"{doc['place']} (dock {m['dock']})"),
            ("记录仪时钟偏差 Recorder clock offset",
             f"{m['health'].get('clock_offset_s')} s"),
            ("清单哈希 Manifest SHA-256", d["manifest_sha256"]),
            ("签名密钥 Signing key", m["key_id"]),
        ]
        lab = labels["docking"]
        rows += [("案件编号 Case number", lab.get("case_no", "-")),
                 ("当事人 Party", lab.get("party", "-")),
                 ("办案人 Case handler", lab.get("handler", "-")),
                 ("备注 Note", lab.get("note", "-"))]
        for name, cl in sorted(labels["clips"].items()):
            rows.append((f"片段标注 Clip label {name}",
                         "; ".join(f"{k}={v}" for k, v in sorted(cl.items()))))
        gaps = [g for g in r["gaps"] if g["kind"] != "session_break"]
        rows.append(("连续性 Continuity",
                     f"{len(gaps)} 处中断 interruption(s), "
                     f"{sum(g['needs_review'] for g in gaps)} 待审核 need review"))
        for g in gaps:
            note = g["reason"] or g["verdict"] or ""
            if g["transcript"]:
                note += f" “{g['transcript']}”"
            rows.append((f"中断 Gap {g['start'][11:19]}–{g['end'][11:19]}",
                         f"{g['length_s']:.1f} s: {note}"
                         + (" (需审核 needs review)" if g["needs_review"] else "")))
        for f in m.get("findings", []):
            if isinstance(f, dict) and not str(f.get("kind", "")).startswith("interruption"):
                rows.append((f"发现 Finding {f.get('kind')}", str(f.get("message", ""))))
        out.append((f"调取记录 Docking {d['id']} ({d['mprefix']})", rows))
    files = [(c["name"], f"{c['size']} B, docking {c['docking']}, SHA-256 {c['sha256']}")
             for c in doc["clips"]]
    files += [(c["name"], f"未导出 not exported (withheld), docking {c['docking']}, SHA-256 "
               f"{c['sha256']}") for c in doc["withheld"]]
    out.append(("文件清单 Files", files))
    out.append(("公钥 Public keys", [(k["key_id"], f"SHA-256 {k['fingerprint_sha256']}")
                                   for k in doc["keys"]]))
    return out


def describe_html(state: State, doc: dict[str, Any], dockings: Sequence[dict[str, Any]]) -> str:
    parts = ["<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">",
             "<title>电子证据说明 Evidence description</title>",
             "<style>body{font-family:'WenQuanYi Micro Hei',sans-serif;margin:2em}"
             "td{vertical-align:top;padding:2px 8px;border-bottom:1px solid #ddd}"
             "td:first-child{white-space:nowrap;font-weight:bold}"
             "code{font-size:90%;word-break:break-all}</style></head><body>",
             "<h1>执法记录仪视音频证据说明<br>Body-worn recorder evidence description</h1>"]
    for heading, rows in _sections(state, doc, dockings):
        parts.append(f"<h2>{html.escape(heading)}</h2><table>")
        for k, v in rows:
            parts.append(f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(str(v))}"
                         "</code></td></tr>")
        parts.append("</table>")
    parts.append("<p>核验方法 How to check: <code>sha256sum -c _export/SHA256SUMS</code>; "
                 "签名 signature: <code>openssl pkeyutl -verify -pubin -inkey KEY.pub -rawin "
                 "-in _export/SHA256SUMS -sigfile _export/SHA256SUMS.sig</code>; or "
                 "<code>dockd verify PACKAGE --pubkey KEY.pub</code>.</p></body></html>")
    return "\n".join(parts)


def cjk_font() -> Path:
    env = os.environ.get("DOCKD_CJK_FONT")
    for cand in ([env] if env else []) + list(FONT_CANDIDATES):
        if cand and Path(cand).is_file():
            return Path(cand)
    raise DockdError("no CJK font for the evidence PDF: install fonts-wqy-microhei or set "
                     "DOCKD_CJK_FONT to a .ttf/.ttc file")


def describe_pdf(state: State, doc: dict[str, Any], dockings: Sequence[dict[str, Any]],
                 dest: Path) -> None:
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    pdf = FPDF(format="A4")
    pdf.set_creation_date(datetime.fromisoformat(doc["created_at"]))
    pdf.set_title("Evidence description")
    pdf.add_font("cjk", fname=str(cjk_font()))
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("cjk", size=15)
    pdf.multi_cell(0, 8, "执法记录仪视音频证据说明\nBody-worn recorder evidence description",
                   new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    for heading, rows in _sections(state, doc, dockings):
        pdf.ln(3)
        pdf.set_font("cjk", size=12)
        pdf.multi_cell(0, 7, heading, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("cjk", size=8)
        for k, v in rows:
            pdf.multi_cell(0, 4.5, f"{k}: {v}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.output(str(dest))
