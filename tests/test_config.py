"""Pipeline config: the shipped configs equal the presets, and bad configs are refused by name."""

from __future__ import annotations

import pathlib

import pytest

from macjax.errors import ConfigError
from macjax.pipeline import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_each_preset_is_spelled_out_in_configs(name):
  assert config_lib.load(ROOT / "configs" / f"{name}.toml") == config_lib.preset(name)
  assert config_lib.load_or_preset(name) == config_lib.preset(name)


def test_plain_is_the_code_default_and_unknown_presets_are_refused():
  assert config_lib.preset("plain") == config_lib.PipelineConfig()
  with pytest.raises(ConfigError, match="unknown config preset 'fast'.*default.*plain"):
    config_lib.preset("fast")
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load_or_preset("fast")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
  config_lib.load(path)


@pytest.mark.parametrize("classes, grid", [("none", None), ("auto", "auto"), ("4x4", (4, 4)), ("1x8", (1, 8))])
def test_coding_classes_parse(classes, grid):
  assert config_lib.from_dict({"coding": {"classes": classes}}).coding.class_grid() == grid


def test_dict_round_trip():
  cfg = config_lib.from_dict({"quantize": {"step": 0.1, "group_size": 64}, "evaluate": {"enabled": False}})
  assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg
  assert cfg.quantize.step == 0.1 and cfg.quantize.group_size == 64 and not cfg.evaluate.enabled
  shared = config_lib.from_dict({"transform": [{"name": "pca"}], "transform_state": {"share": "role"}})
  assert config_lib.from_dict(config_lib.to_dict(shared)) == shared and shared.transform_state.share == "role"


@pytest.mark.parametrize("data, match", [
    ({"quantise": {}}, "unknown config key quantise"),
    ({"quantize": {"stepp": 0.1}}, "unknown config key quantize.stepp"),
    ({"quantize": {"step": "big"}}, "quantize.step = 'big' has type str; expected float"),
    ({"quantize": {"step": -1.0}}, "quantize.step = -1.0"),
    ({"quantize": {"group_size": 1.5}}, "quantize.group_size"),
    ({"quantize": {"method": "magic"}}, "quantize.method = 'magic'"),
    ({"embeddings": {"treatment": "drop"}}, "embeddings.treatment"),
    ({"evaluate": {"enabled": "yes"}}, "evaluate.enabled"),
    ({"quantize": 3}, "must be a table"),
    ({"transform": [{"name": "pca"}], "transform_state": {"share": "layer"}}, "transform_state.share = 'layer'"),
    ({"transform_state": {"share": "role"}}, "transform_state.share = 'role' with no \\[\\[transform\\]\\]"),
    ({"coding": {"classes": "4by4"}}, "coding.classes = '4by4'"),
    ({"coding": {"classes": "0x4"}}, "coding.classes = '0x4'"),
    ({"coding": {"classes": "2x2", "model": "raw"}}, "coding.classes = '2x2'"),
], ids=["unknown-section", "unknown-key", "wrong-type", "out-of-range", "int-expected", "unknown-method",
        "unknown-treatment", "bool-expected", "section-not-table", "unknown-share", "share-without-chain",
        "classes-malformed", "classes-zero", "classes-with-raw"])
def test_bad_config_is_refused_by_name(data, match):
  with pytest.raises(ConfigError, match=match):
    config_lib.from_dict(data)


def test_bad_files(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load(tmp_path / "none.toml")
  bad = tmp_path / "bad.toml"
  bad.write_text("[quantize\nstep = 1")
  with pytest.raises(ConfigError, match="not valid TOML"):
    config_lib.load(bad)


def test_overrides():
  cfg = config_lib.with_overrides(config_lib.PipelineConfig(), ["quantize.step=0.25", "embeddings.treatment=float16"])
  assert cfg.quantize.step == 0.25 and cfg.embeddings.treatment == "float16"
  for bad, match in [("quantize.nope=1", "unknown config key"), ("nosection.x=1", "unknown config section"),
                     ("quantize.step", "not of the form")]:
    with pytest.raises(ConfigError, match=match):
      config_lib.with_overrides(config_lib.PipelineConfig(), [bad])
