"""Chain of custody: case labels and retention as signed revisions (R4, R7), the audit
trail delivered to the targets (R8), approved evidence export (R8, R12)."""
