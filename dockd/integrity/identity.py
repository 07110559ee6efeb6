"""Identity binding (pure): does the recorder's claimed serial match the USB device?

A recorder names itself twice: the serial in its device-info file (which anyone can edit)
and the USB serial udev reads from the device (``ID_SERIAL_SHORT``, which the allow-list
checks). Both go into the manifest. Each disagreement is a finding shown to the supervisor:

* ``identity_mismatch``: the two serials differ (compared ignoring case and surrounding
  blanks);
* ``identity_history``: this device-info serial came with another USB serial before, or
  this USB serial with another device-info serial (a recorder claiming another's identity);
* ``identity_not_allowed``: a serial does not match the ``serial_pattern`` of the
  allow-list entries for this vendor/model.

No USB serial (directory source, or a device without one) gives no findings: nothing to
compare.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from ..config import AllowConfig
from ..model import Finding

USB_SERIAL_HINT = "ID_SERIAL_SHORT"


def _norm(s: str) -> str:
    return s.strip().casefold()


def usb_serial_of(hints: Mapping[str, str]) -> str | None:
    value = (hints.get(USB_SERIAL_HINT) or "").strip()
    return value or None


def identity_findings(info_serial: str, usb_serial: str | None, *,
                      usb_serials_before: Iterable[str] = (),
                      info_serials_before: Iterable[str] = (),
                      hints: Mapping[str, str] | None = None,
                      allow: Sequence[AllowConfig] = ()) -> list[Finding]:
    """Findings for one docking (see the module docstring)."""
    if not usb_serial:
        return []
    out: list[Finding] = []
    if _norm(info_serial) != _norm(usb_serial):
        out.append(Finding("identity_mismatch", "warning",
                           f"device-info serial {info_serial!r} differs from the USB serial "
                           f"{usb_serial!r}", {"info_serial": info_serial,
                                               "usb_serial": usb_serial}))
    other_usb = sorted({s for s in usb_serials_before if s and _norm(s) != _norm(usb_serial)})
    if other_usb:
        out.append(Finding("identity_history", "warning",
                           f"recorder {info_serial!r} docked before with USB serial(s) "
                           f"{', '.join(other_usb)}, now {usb_serial!r}",
                           {"info_serial": info_serial, "usb_serial": usb_serial,
                            "usb_serials_before": other_usb}))
    other_info = sorted({s for s in info_serials_before if s and _norm(s) != _norm(info_serial)})
    if other_info:
        out.append(Finding("identity_history", "warning",
                           f"USB device {usb_serial!r} claimed to be recorder(s) "
                           f"{', '.join(other_info)} before, now {info_serial!r}",
                           {"info_serial": info_serial, "usb_serial": usb_serial,
                            "info_serials_before": other_info}))
    patterns = _patterns_for(hints or {}, allow)
    for label, serial in (("USB serial", usb_serial), ("device-info serial", info_serial)):
        if patterns and not any(_full(p, serial) for p in patterns):
            out.append(Finding("identity_not_allowed", "warning",
                               f"{label} {serial!r} does not match the allow-list's serial "
                               f"pattern(s) for this model", {"serial": serial,
                                                              "patterns": patterns}))
    return out


def _patterns_for(hints: Mapping[str, str], allow: Sequence[AllowConfig]) -> list[str]:
    vendor = hints.get("ID_VENDOR_ID", "").lower()
    model = hints.get("ID_MODEL_ID", "").lower()
    out = []
    for rule in allow:
        if rule.vendor_id.lower() != vendor or not rule.serial_pattern:
            continue
        if rule.model_id and rule.model_id.lower() != model:
            continue
        out.append(rule.serial_pattern)
    return out


def _full(pattern: str, value: str) -> bool:
    try:
        return re.fullmatch(pattern, value) is not None
    except re.error:
        return False
