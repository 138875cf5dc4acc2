"""Tests for the one definition of the training program's options (train/options.py)."""

import dataclasses

import pytest

from larq_nobn.train import main as main_mod
from larq_nobn.train import options
from larq_nobn.train.config import Config, ConfigError

FLAG_TYPES = {
    str: "string",
    int: "int",
    float: "float",
    bool: "bool",
    tuple: "comma separated list of strings",
}


def test_the_flags_are_the_options():
    flags = main_mod.FLAGS.get_flags_for_module(options)
    assert [flag.name for flag in flags] == [option.name for option in options.OPTIONS]
    for option in options.OPTIONS:
        flag = main_mod.FLAGS[option.name]
        assert flag.default == option.default, option.name
        assert flag.help == option.help, option.name
        assert flag.flag_type() == FLAG_TYPES[option.type], option.name


def test_config_has_a_field_per_option_with_its_default():
    fields = dataclasses.fields(Config)
    assert [field.name for field in fields] == [option.name for option in options.OPTIONS]
    assert [field.default for field in fields] == [option.default for option in options.OPTIONS]
    assert "deterministic" in {field.name for field in fields}


def test_config_json_is_every_option():
    config = Config(stages=(1, 2), deterministic=True).resolved()
    saved = options.to_json(config)
    assert list(saved) == [option.name for option in options.OPTIONS]
    assert saved["stages"] == [1, 2] and saved["deterministic"] is True


def test_an_unfinished_run_resumes_with_the_same_flags_only():
    config = Config(stem="cifar").resolved()
    saved = options.to_json(config)
    assert options.changed(saved, config) == []
    # Written before --deterministic was recorded: the run had its default.
    old = {k: v for k, v in saved.items() if k != "deterministic"}
    assert options.changed(old, config) == []
    assert options.changed(old, dataclasses.replace(config, deterministic=True)) == [
        "deterministic"
    ]
    # --verbose changes what is printed, not what is trained.
    assert options.changed({**saved, "verbose": 2}, config) == []
    assert options.changed({**saved, "stages": [1]}, config) == ["stages"]
    assert options.changed({**saved, "seed": 1, "gone": 0}, config) == ["gone", "seed"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--stages=one"], "--stages must be 1, 2 or 1,2, got one"),
        (["--stages=1,x"], "--stages must be 1, 2 or 1,2, got 1,x"),
    ],
)
def test_a_malformed_list_is_a_config_error(flags, message):
    main_mod.FLAGS.unparse_flags()
    try:
        main_mod.FLAGS(["main.py", *flags])
        with pytest.raises(ConfigError, match=message):
            main_mod.config_from_flags()
    finally:
        main_mod.FLAGS.unparse_flags()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("model", "nope", "unknown --model 'nope'; valid names: reactnet_a_bn,"),
        ("stem", "tiny", "unknown --stem 'tiny'; valid names: imagenet, cifar"),
        ("strategy", "ps", "unknown --strategy 'ps'; valid names: auto,"),
        ("epochs", 0, "--epochs must be positive, got 0"),
        ("agc_clip", -1.0, "--agc_clip must be >= 0 (0 disables AGC), got -1.0"),
    ],
)
def test_each_option_checks_its_value(option, value, message):
    assert options.BY_NAME[option].problem(value).startswith(message)
    assert options.BY_NAME[option].problem(options.BY_NAME[option].default or 1) is None


def test_an_option_names_one_of_the_help_groups():
    """A new option without a group fails where it is written (the help's sections stay
    complete when options are added)."""
    with pytest.raises(TypeError, match="group"):
        options.Option("new", int, 0, "a new option")
    with pytest.raises(ValueError, match="option --new: group must be one of model, data,"):
        options.Option("new", int, 0, "a new option", group="misc")
    for option in (*options.OPTIONS, *options.SPP_OPTIONS):
        assert option.group in options.GROUPS, option.name


def test_help_text_groups_the_options_and_full_help_adds_absl_flags():
    from absl import flags

    flag_values = flags.FlagValues()
    flags.DEFINE_bool("absl_like", False, "a flag of another module", flag_values=flag_values)
    short = options.help_text("cmd", "Does it.", options.SPP_OPTIONS, flag_values)
    full = options.help_text("cmd", "Does it.", options.SPP_OPTIONS, flag_values, full=True)
    assert short.splitlines()[:4] == ["usage: cmd [flags]", "", "Does it.", ""]
    positions = [short.index(f"\n{group}: ") for group in ("model", "data", "outputs")]
    assert positions == sorted(positions) and "\ntraining: " not in short
    assert short.index("--backbone=TEXT") < positions[1] < short.index("--images=INT")
    assert "(default: 64)" in short and "--absl_like" not in short
    assert "--helpfull" in short.splitlines()[-1]
    assert full.startswith(short[: short.index("--helpfull")])
    assert "--[no]absl_like" in full and "--flagfile" in full
