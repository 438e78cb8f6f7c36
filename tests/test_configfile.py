"""ffint8.configfile: YAML/TOML config files, their checks and errors, and dump_resolved."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from ffint8 import configfile
from ffint8.configfile import default_valid_keys, dump_resolved, load_config_file
from ffint8.errors import ConfigError
from ffint8.train.config import FFConfig, TrainConfig

FF_KEYS = {f.name for f in fields(FFConfig)}


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path, valid=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config_file(path, valid)
    assert str(path) in str(e.value)
    return str(e.value)


def _to_train_config(flat: dict) -> TrainConfig:
    """A flat option dict as TrainConfig (the CLI's job; here to check round trips)."""
    ff = {k: v for k, v in flat.items() if k in FF_KEYS}
    rest = {k: v for k, v in flat.items() if k not in FF_KEYS}
    return TrainConfig.from_dict({**rest, "ff": ff})


def test_default_valid_keys():
    valid = default_valid_keys()
    assert set(valid) == ({f.name for f in fields(TrainConfig)} - {"ff"}) | FF_KEYS
    assert valid["hidden"] == list[int]
    assert valid["epochs"] is int and valid["lr"] is float and valid["weight_channel"] is bool
    assert valid["chain_depth"] == (int | None) and valid["data_dir"] == (str | None)
    for name in ("limit_train", "limit_test", "threads"):
        assert valid[name] == (int | None)


def test_yaml_flat_hyphens_and_section(tmp_path):
    path = _file(tmp_path, "run.yaml", """
epochs: 5
look-ahead: chain
lr: 0.01
hidden: [500, 500]
data_dir: null
ff:
  theta: 3
  weight-channel: true
  chain_depth: 2
""")
    assert load_config_file(path) == {
        "epochs": 5, "look_ahead": "chain", "lr": 0.01, "hidden": [500, 500], "data_dir": None,
        "theta": 3.0, "weight_channel": True, "chain_depth": 2,
    }


def test_yml_suffix_and_empty_file(tmp_path):
    assert load_config_file(_file(tmp_path, "a.yml", "batch_size: 64\n")) == {"batch_size": 64}
    assert load_config_file(_file(tmp_path, "empty.yaml", "# nothing\n")) == {}


def test_yaml_reads_exponent_floats(tmp_path):
    path = _file(tmp_path, "a.yaml", "lr: 1e-3\nweight_decay: 5.0e-4\nlambda_step: +1E-2\n")
    assert load_config_file(path) == {"lr": 0.001, "weight_decay": 0.0005, "lambda_step": 0.01}


def test_toml_flat_hyphens_and_section(tmp_path):
    path = _file(tmp_path, "run.toml", """
epochs = 5
look-ahead = "chain"
lr = 0.01
hidden = [500, 500]

[ff]
theta = 3
weight_channel = true
""")
    assert load_config_file(path) == {
        "epochs": 5, "look_ahead": "chain", "lr": 0.01, "hidden": [500, 500],
        "theta": 3.0, "weight_channel": True,
    }


def test_yaml_round_trip_of_a_train_config(tmp_path):
    cfg = TrainConfig(hidden=(64, 32), epochs=3, lr=0.01, limit_train=100,
                      ff=FFConfig(look_ahead="chain", chain_depth=1, weight_channel=True))
    path = tmp_path / "run" / "config.yaml"
    dump_resolved(cfg.to_dict(), path)
    loaded = load_config_file(path)
    assert loaded["hidden"] == [64, 32] and loaded["chain_depth"] == 1
    assert loaded["data_dir"] is None and loaded["threads"] is None
    assert _to_train_config(loaded) == cfg


def test_toml_round_trip_of_a_train_config(tmp_path):
    cfg = TrainConfig(hidden=(16,), epochs=2, lr=1.0, seed=7, dataset="mnist",
                      ff=FFConfig(algo="ff-fp32", theta=1.5, schedule="greedy"))
    path = _file(tmp_path, "run.toml", """
hidden = [16]
epochs = 2
lr = 1
seed = 7
dataset = "mnist"

[ff]
algo = "ff-fp32"
theta = 1.5
schedule = "greedy"
""")
    loaded = load_config_file(path)
    assert loaded["lr"] == 1.0 and isinstance(loaded["lr"], float)
    assert _to_train_config(loaded) == cfg


def test_dump_resolved_yaml_format_and_atomicity(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old\n")
    dump_resolved({"epochs": 2, "hidden": (8, 8), "out": tmp_path / "run"}, path)
    text = path.read_text()
    assert "hidden: [8, 8]" in text and "epochs: 2" in text and str(tmp_path / "run") in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temporary left
    with pytest.raises(Exception, match="cannot represent"):
        dump_resolved({"epochs": object()}, path)  # cannot be written: old file stays whole
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_dump_resolved_json_without_pyyaml(tmp_path, monkeypatch):
    monkeypatch.setattr(configfile, "_yaml_loader", lambda: None)
    path = tmp_path / "config.yaml"
    data = {"epochs": 2, "hidden": [8], "chain_depth": None, "ff": {"theta": 2.0}}
    dump_resolved(data, path)
    assert json.loads(path.read_text()) == data


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "absent.yaml")
    (tmp_path / "dir.toml").mkdir()
    assert "cannot read it" in _error(tmp_path / "dir.toml")


@pytest.mark.parametrize("name", ["run.json", "run.ini", "run"])
def test_unknown_extension(tmp_path, name):
    msg = _error(_file(tmp_path, name, "epochs: 1\n"))
    assert "use .yaml, .yml or .toml" in msg


def test_yaml_parse_error_names_the_line(tmp_path):
    msg = _error(_file(tmp_path, "bad.yaml", "epochs: 1\nlr: 0.1\n  theta: [1, 2\n"))
    assert "invalid YAML" in msg and "line 3" in msg


def test_toml_parse_error_names_the_line(tmp_path):
    msg = _error(_file(tmp_path, "bad.toml", 'epochs = 1\nlr = = 2\n'))
    assert "invalid TOML" in msg and "line 2" in msg


def test_undecodable_file(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"epochs: \xff\xfe\n")
    assert "cannot read" in _error(path)


@pytest.mark.parametrize("text", ["- epochs\n- 5\n", "just text\n", "42\n"])
def test_top_level_not_a_mapping(tmp_path, text):
    assert "top level must be a mapping" in _error(_file(tmp_path, "a.yaml", text))


def test_unknown_keys_listed_with_valid_ones(tmp_path):
    msg = _error(_file(tmp_path, "a.yaml", "epoch: 5\nfoo: 1\nff:\n  thetaa: 2\n"))
    assert "'epoch' (did you mean 'epochs'?)" in msg and "'foo'" in msg
    assert "'ff.thetaa' (did you mean 'theta'?)" in msg
    assert "valid options:" in msg and "look_ahead" in msg and "batch_size" in msg


def test_custom_valid_keys(tmp_path):
    valid = {"epochs": int, "out": str, "no_progress": bool}
    path = _file(tmp_path, "a.toml", 'epochs = 3\nout = "runs/x"\nno-progress = true\n')
    assert load_config_file(path, valid) == {"epochs": 3, "out": "runs/x", "no_progress": True}
    msg = _error(_file(tmp_path, "b.toml", "lr = 0.1\n"), valid)
    assert "'lr'" in msg and "epochs, out, no_progress" in msg


def test_given_twice(tmp_path):
    assert "given twice" in _error(_file(tmp_path, "a.yaml", "look_ahead: chain\nlook-ahead: x\n"))
    msg = _error(_file(tmp_path, "b.toml", 'theta = 2.0\n[ff]\ntheta = 3.0\n'))
    assert "given twice" in msg and "'ff.theta'" in msg


def test_section_must_be_a_mapping(tmp_path):
    assert "section" in _error(_file(tmp_path, "a.yaml", "ff: 3\n"))


def test_option_names_must_be_text(tmp_path):
    assert "must be text" in _error(_file(tmp_path, "a.yaml", "1: 2\n"))


@pytest.mark.parametrize("line, expected", [
    ("epochs: ten", "'epochs' must be an integer, got 'ten'"),
    ("epochs: true", "'epochs' must be an integer, got true"),
    ("epochs: 2.5", "'epochs' must be an integer, got 2.5"),
    ("epochs: null", "'epochs' must be an integer, got null"),
    ("lr: true", "'lr' must be a number, got true"),
    ("lr: '0.1'", "'lr' must be a number, got '0.1'"),
    ("lr: null", "'lr' must be a number, got null"),
    ("look-ahead: 3", "'look-ahead' must be a string, got 3"),
    ("weight_channel: 1", "'weight_channel' must be a boolean (true/false), got 1"),
    ("hidden: 500", "'hidden' must be a list of integers, got 500"),
    ("hidden: [500, x]", "'hidden' must be a list of integers, got [500, 'x']"),
    ("hidden: [500, true]", "'hidden' must be a list of integers"),
    ("chain_depth: two", "'chain_depth' must be an integer or null, got 'two'"),
    ("chain_depth: false", "'chain_depth' must be an integer or null, got false"),
    ("data_dir: 5", "'data_dir' must be a string or null, got 5"),
    ("epochs: {a: 1}", "'epochs' must be an integer, got a mapping"),
])
def test_wrong_types(tmp_path, line, expected):
    assert expected in _error(_file(tmp_path, "a.yaml", line + "\n"))


def test_types_accepted(tmp_path):
    path = _file(tmp_path, "a.yaml", "lr: 1\ntheta: 2\nchain_depth: null\nthreads: 4\n"
                 "limit_train: ~\nweight_channel: false\n")
    got = load_config_file(path)
    assert got == {"lr": 1.0, "theta": 2.0, "chain_depth": None, "threads": 4,
                   "limit_train": None, "weight_channel": False}
    assert isinstance(got["lr"], float) and isinstance(got["theta"], float)


def test_wrong_type_in_toml_section_names_its_key(tmp_path):
    msg = _error(_file(tmp_path, "a.toml", '[ff]\ntheta = "high"\n'))
    assert "'ff.theta' must be a number, got 'high'" in msg


def test_missing_parsers_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(configfile, "_yaml_loader", lambda: None)
    monkeypatch.setattr(configfile, "_toml_module", lambda: None)
    assert "pip install pyyaml" in _error(_file(tmp_path, "a.yaml", "epochs: 1\n"))
    assert "pip install tomli" in _error(_file(tmp_path, "a.toml", "epochs = 1\n"))
