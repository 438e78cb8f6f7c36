"""--preset: named settings under --config and flags; `paper` is the paper's configuration."""

import pytest

from ffint8.cli import config_from_args, main, parse_args
from ffint8.errors import ConfigError
from ffint8.train.config import PRESETS, preset_config


def resolved(argv):
    cfg = config_from_args(parse_args(["train", *argv]))
    return {**cfg.to_dict(), **cfg.ff.__dict__, "hidden": cfg.hidden}


def test_paper_preset_sets_every_value_it_names():
    got = resolved(["--preset", "paper"])
    for key, want in PRESETS["paper"].items():
        assert got[key] == want, key


def test_flags_and_config_file_override_the_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.002\nlook_ahead: none\n")
    got = resolved(["--preset", "paper", "--config", str(f), "--look-ahead", "chain"])
    assert got["lr"] == 0.002  # the file over the preset
    assert got["look_ahead"] == "chain"  # the flag over both
    assert got["predict"] == "goodness"  # the preset over the built-in default


def test_unknown_preset(capsys, tmp_path):
    assert main(["train", "--preset", "fast", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "invalid --preset 'fast'" in err and "paper" in err


def test_preset_config_equals_the_cli_preset_with_the_same_overrides():
    cli = config_from_args(parse_args(["train", "--preset", "paper", "--epochs", "3",
                                       "--lambda-start", "0.05", "--algo", "ff-fp32"]))
    assert preset_config("paper", epochs=3, lambda_start=0.05, algo="ff-fp32") == cli
    assert preset_config("paper").ff.look_ahead == "collab"  # not the shipped default (chain)
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        preset_config("fast")
