"""Configuration: the example documents the schema; every problem is reported with its path."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from dockd import config as cfgmod
from dockd.cli import main
from dockd.config import Config, ConfigError, from_dict, load, parse_size, schema_keys

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"


def _example_keys(text: str) -> set[str]:
    """Key paths written in the example file (tables, arrays of tables, assignments)."""
    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"\[\[(\w+)\]\]", line):
            section = m.group(1) + "[]."
        elif m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1) + "."
        elif m := re.match(r"(\w+)\s*=", line):
            keys.add(section + m.group(1))
    return keys


def test_example_config_loads_and_documents_every_key():
    cfg = load(EXAMPLE)
    assert cfg.dock.id == "dock-01"
    assert set(schema_keys()) == _example_keys(EXAMPLE.read_text(encoding="utf-8"))


def test_every_example_key_has_a_comment_above_it():
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\w+\s*=", line.strip()):
            assert lines[i - 1].lstrip().startswith("#"), f"key without comment: {line}"


def test_example_values_equal_schema_defaults_where_not_site_specific():
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    cfg = from_dict(raw)
    default = Config()
    assert cfg.offload == default.offload
    assert cfg.delivery == default.delivery
    assert cfg.profiles == default.profiles
    assert cfg.tools == default.tools


def test_all_problems_reported_at_once_with_key_paths():
    raw = {
        "dock": {"id": "dock 01!", "ports": "eight", "colour": "blue"},
        "offload": {"workers": 0, "chunk_size": "4 parsecs"},
        "targets": [{"name": "a", "kind": "ftp", "path": "/x"}, {"path": 5}],
        "mystery": 1,
    }
    with pytest.raises(ConfigError) as ei:
        from_dict(raw)
    text = "\n".join(ei.value.problems)
    assert "dock.ports: expected int" in text
    assert "dock.colour: unknown key" in text
    assert "offload.chunk_size:" in text
    assert "targets[1].path: expected a non-empty path" in text
    assert "mystery: unknown key" in text


def test_semantic_problems_reported_together():
    with pytest.raises(ConfigError) as ei:
        from_dict({"dock": {"id": "bad id", "timezone": "Mars/Olympus"},
                   "offload": {"workers": 0},
                   "targets": [{"kind": "ftp", "required": False}],
                   "profiles": [{"file_pattern": "(unclosed"}]})
    probs = ei.value.problems
    assert any(p.startswith("dock.id:") for p in probs)
    assert any(p.startswith("dock.timezone:") for p in probs)
    assert any(p.startswith("offload.workers:") for p in probs)
    assert any(p.startswith("targets[0].kind:") for p in probs)
    assert any(p.startswith("targets:") and "required" in p for p in probs)
    assert any(p.startswith("profiles[0].file_pattern:") for p in probs)


def test_integrity_section_is_checked():
    with pytest.raises(ConfigError) as ei:
        from_dict({"integrity": {"tsa_url": "ftp://tsa", "checkpoint_minutes": 0,
                                 "checkpoint_max_age_hours": -1,
                                 "audit_rehash_per_pass": -2}})
    probs = ei.value.problems
    assert any(p.startswith("integrity.tsa_url: must be an http(s) URL") for p in probs)
    assert any(p.startswith("integrity.checkpoint_minutes: must be positive") for p in probs)
    assert any(p.startswith("integrity.checkpoint_max_age_hours:") for p in probs)
    assert any(p.startswith("integrity.audit_rehash_per_pass:") for p in probs)
    with pytest.raises(ConfigError, match="must exceed checkpoint_minutes"):
        from_dict({"integrity": {"checkpoint_minutes": 180, "checkpoint_max_age_hours": 2}})
    ok = from_dict({"integrity": {"tsa_url": "http://127.0.0.1:3318/tsa"}})
    assert ok.integrity.tsa_url.endswith("/tsa")


@pytest.mark.parametrize("url", ["minio.local:9000", "ftp://minio.local", "http://", "http:// x",
                                 "https://host/ path"])
def test_s3_endpoint_must_be_an_http_url(url):
    """botocore refuses such an endpoint only when the first upload creates its client: it
    is a configuration problem, reported by config-check, not a delivery to retry."""
    target = {"name": "s3", "kind": "s3", "bucket": "evidence", "endpoint_url": url}
    with pytest.raises(ConfigError) as ei:
        from_dict({"targets": [{"path": "/srv/evidence"}, {**target, "required": False}]})
    assert [p for p in ei.value.problems if p.startswith("targets[1].endpoint_url:")]
    for good in ("", "http://127.0.0.1:9000", "https://s3.example.gov.cn/prefix"):
        from_dict({"targets": [{"path": "/srv/evidence"},
                               {**target, "endpoint_url": good, "required": False}]})


def test_pattern_without_start_group_is_rejected():
    with pytest.raises(ConfigError, match=r"profiles\[0\].file_pattern: needs a named group"):
        from_dict({"profiles": [{"file_pattern": r"^(?P<serial>\w+)\.MP4$"}]})


@pytest.mark.parametrize("text,value", [("4 MiB", 4 * 1024**2), ("1GB", 10**9), (512, 512),
                                        ("2.5 KiB", 2560)])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", [True, -1, "lots", "5 XB"])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_tool_paths_are_settable():
    cfg = from_dict({"tools": {"ffmpeg": "/opt/ff/ffmpeg", "exiftool": "/opt/et/exiftool"}})
    assert cfg.tools.ffmpeg == "/opt/ff/ffmpeg"
    assert cfg.tools.exiftool == "/opt/et/exiftool"
    assert cfg.tools.ffprobe == "ffprobe"
    assert cfg.tools.probe_processes == 2


@pytest.mark.parametrize("bad", [0, -1, 17])
def test_probe_processes_out_of_range_is_named(bad):
    with pytest.raises(ConfigError, match=r"tools\.probe_processes: must be between 1 and 16"):
        from_dict({"tools": {"probe_processes": bad}})
    assert from_dict({"tools": {"probe_processes": 1}}).tools.probe_processes == 1


def test_workdir_puts_everything_under_one_directory(tmp_path):
    cfg = cfgmod.for_workdir(tmp_path)
    for p in (cfg.paths.database, cfg.paths.staging_dir, cfg.paths.ports_dir,
              cfg.paths.key_file, cfg.paths.public_key_file, cfg.targets[0].path):
        assert tmp_path in p.parents


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[dock\nid=1", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_config_check_command(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["config-check", "--config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[dock]\nports = 0\nfoo = 1\n[offload]\nworkers = "x"\n', encoding="utf-8")
    assert main(["config-check", "--config", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "dock.foo: unknown key" in out and "offload.workers: expected int" in out
    assert main(["config-check", "--json", "--config", str(bad)]) == 1
    assert '"ok": false' in capsys.readouterr().out


def _mistakes(tmp_path: Path) -> Path:
    """A config with one mistake of each kind config-check used to miss."""
    (tmp_path / "afile").write_text("not a directory", encoding="utf-8")
    cfg = tmp_path / "mistakes.toml"
    cfg.write_text(f"""
[dock]
ports = 0
[paths]
state_dir = "{tmp_path / 'state'}"
staging_dir = "{tmp_path / 'afile'}"
ports_dir = "{tmp_path / 'ports'}"
key_file = "{tmp_path / 'keys' / 'dock.key'}"
public_key_file = "{tmp_path / 'keys' / 'dock.pub'}"
[delivery]
alert_command = "no-such-alert-command-xyz --to ops"
[[targets]]
name = "primary"
path = "evidence/target"
[[targets]]
name = "offsite"
kind = "sftp"
required = false
host = "127.0.0.1"
user = "dock"
key_file = "{tmp_path / 'missing_key'}"
known_hosts = "{tmp_path / 'missing_known_hosts'}"
path = "/evidence"
[[targets]]
name = "s3"
kind = "s3"
required = false
bucket = "b"
credentials_file = "{tmp_path / 'missing_creds.ini'}"
""", encoding="utf-8")
    return cfg


def test_config_check_reports_machine_mistakes_in_one_run(tmp_path, capsys):
    cfg = _mistakes(tmp_path)
    assert main(["config-check", "--json", "--config", str(cfg)]) == 1
    import json

    problems = json.loads(capsys.readouterr().out)["problems"]
    keys = {p.split(": ", 1)[0] for p in problems}
    assert {"dock.ports", "paths.staging_dir", "targets[0].path", "targets[1].key_file",
            "targets[1].known_hosts", "targets[2].credentials_file",
            "delivery.alert_command"} <= keys, problems
    text = "\n".join(problems)
    assert "not a directory" in text and "absolute path" in text
    assert "no-such-alert-command-xyz" in text and "missing_key does not exist" in text


def test_type_and_semantic_problems_in_one_round():
    with pytest.raises(ConfigError) as ei:
        from_dict({"dock": {"ports": "eight", "id": "bad id"}})
    text = "\n".join(ei.value.problems)
    assert "dock.ports: expected int" in text and "dock.id:" in text


def test_run_refuses_a_config_that_does_not_fit_the_machine(tmp_path, capsys):
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[paths]
state_dir = "{tmp_path / 'state'}"
staging_dir = "{tmp_path / 'afile'}"
ports_dir = "{tmp_path / 'ports'}"
key_file = "{tmp_path / 'dock.key'}"
public_key_file = "{tmp_path / 'dock.pub'}"
[[targets]]
path = "{tmp_path / 'target'}"
""", encoding="utf-8")
    for cmd in (["run"], ["ingest", str(tmp_path)]):
        assert main([*cmd, "--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert "paths.staging_dir:" in err and "not a directory" in err
        assert "Traceback" not in err and "FileExistsError" not in err
    assert not (tmp_path / "state").exists()  # nothing started
