"""Delivery benchmarks: ``--s3`` (bench/deliver_s3.py) and ``--sftp`` (bench/deliver_sftp.py).

    .venv/bin/python bench/deliver.py [--s3] [--sftp] [args passed on to each]

No flag runs every half that exists. Each half's own options follow its flag's module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _half(name: str) -> object | None:
    path = HERE / f"deliver_{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"deliver_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    wanted = [h for h in ("s3", "sftp") if f"--{h}" in args] or ["s3", "sftp"]
    rest = [a for a in args if a not in ("--s3", "--sftp")]
    for half in wanted:
        module = _half(half)
        if module is None:
            print(f"bench/deliver_{half}.py is missing; skipping {half}")
            continue
        print(f"== {half} ==", flush=True)
        rc = module.main(rest)  # type: ignore[attr-defined]
        if rc:
            return int(rc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
