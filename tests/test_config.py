import pytest

from mobilenetv3.cli import run_cli
from mobilenetv3.cli import TRAIN_KEYS
from mobilenetv3.cli import from_command_line
from mobilenetv3.config import FIELDS, Config, ConfigError, build_config
from mobilenetv3.errors import UserError
from conftest import REPO, run_main, run_script

# The seed README's parameter table: key -> default. Two deliberate changes: num_parallel_workers 0 (each
# process's share of the CPUs) instead of the seed's fixed 8, and decay_epoch 0 (the cosine spans the run,
# whatever epoch_size: the seed's 200 at its epoch_size 200).
SEED_DEFAULTS = dict(device_target="GPU", data_url="", pretrained=None, run_distribute=True, num_parallel_workers=0,
                     dataset_sink_mode=True, num_classes=1000, batch_size=64, repeat_num=1, momentum=0.9,
                     epoch_size=200, keep_checkpoint_max=10, ckpt_save_dir="./mobilenet_v3",
                     lr_decay_mode="cosine_decay_lr", decay_epoch=0, smooth_factor=0.1, max_lr=0.1, min_lr=0.0,
                     milestone=[], learning_rates=[], resize=224)


@pytest.mark.parametrize("name", ["small", "large"])
def test_imagenet_recipes_carry_the_seed_table(name):
    path = REPO / "configs" / f"mobilenet_v3_{name}_imagenet.yaml"
    text = path.read_text()
    for key in SEED_DEFAULTS:  # every seed key is written out in the file, not left implicit
        assert f"\n{key}:" in text, key
    config = build_config(path)
    assert {key: getattr(config, key) for key in SEED_DEFAULTS} == SEED_DEFAULTS
    assert config.model == f"mobilenet_v3_{name}" and config.bn_momentum == 0.99


def test_defaults_are_the_seed_defaults():
    config = Config()
    assert {key: getattr(config, key) for key in SEED_DEFAULTS} == SEED_DEFAULTS


def test_flags_override_the_file_in_seed_spelling(tmp_path):
    path = REPO / "configs" / "mobilenet_v3_small_imagenet.yaml"
    config = from_command_line(["--config", str(path), "--model", "mobilenet_v3_large", "--data_url",
                                "./dataset/imagenet", "--epoch_size", "120", "--dataset_sink_mode", "False",
                                "--milestone", "30,60", "--learning_rates", "0.1 0.01", "--pretrained", "false",
                                "--max_lr=0.4"], keys=TRAIN_KEYS)
    assert (config.model, config.data_url, config.epoch_size, config.dataset_sink_mode) == \
        ("mobilenet_v3_large", "./dataset/imagenet", 120, False)
    assert config.milestone == [30, 60] and config.learning_rates == [0.1, 0.01]
    assert config.pretrained is None and config.max_lr == 0.4
    assert config.batch_size == 64  # from the file


@pytest.mark.parametrize("word,value", [("true", True), ("True", True), ("yes", True), ("1", True), ("on", True),
                                        ("false", False), ("FALSE", False), ("no", False), ("0", False)])
def test_boolean_spellings(word, value):
    assert from_command_line(["--run_distribute", word]).run_distribute is value


def test_a_boolean_flag_alone_means_true():
    assert from_command_line(["--use_ema"]).use_ema is True
    config = from_command_line(["--use_ema", "--batch_size", "4", "--dataset_sink_mode"])
    assert (config.use_ema, config.batch_size, config.dataset_sink_mode) == (True, 4, True)
    assert from_command_line([]).use_ema is False


@pytest.mark.parametrize("argv,message", [
    (["--batch_size", "abc"], "batch_size (from --batch_size): expected an integer, got 'abc'"),
    (["--epoch_size", "-3"], "epoch_size (from --epoch_size): must be >= 1, got '-3'"),
    (["--batch_size", "2.5"], "batch_size (from --batch_size): expected an integer, got '2.5'"),
    (["--run_distribute", "maybe"], "run_distribute (from --run_distribute): expected true or false, got 'maybe'"),
    (["--model", "mobilenet_v2"], "model (from --model): must be one of mobilenet_v3_small, mobilenet_v3_large"),
    (["--max_lr", "fast"], "max_lr (from --max_lr): expected a number, got 'fast'"),
    (["--milestone", "30,x"], "milestone (from --milestone): expected a list of int"),
    (["--epoch_sise", "3"], "unknown flag '--epoch_sise'; did you mean '--epoch_size'? (see --help)"),
    (["--lr", "3"], "unknown flag '--lr'"),
])
def test_bad_flags_name_the_key(argv, message):
    with pytest.raises(ConfigError) as err:
        from_command_line(argv)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_flag_suggestions_come_from_the_scripts_own_keys():
    with pytest.raises(ConfigError, match=r"did you mean '--top_k'\?"):
        from_command_line(["--topk", "3"], keys=["top_k", "data_url"])


def test_yaml_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("batch_size: 32\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'learning_rate'; did you mean 'learning_rates'\?"):
        build_config(path)
    path.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match=rf"batch_size \(from {path}\): expected an integer, got 'many'"):
        build_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_config(path)
    with pytest.raises(ConfigError, match="not found"):
        build_config(tmp_path / "missing.yaml")


def test_piecewise_needs_matching_lists():
    with pytest.raises(ConfigError, match="same length"):
        build_config(overrides=dict(lr_decay_mode="piecewise", milestone=[1, 2], learning_rates=[0.1]))


def test_cli_prints_one_line_and_exits_2():
    result = run_main("train", "--batch_size", "abc")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: batch_size (from --batch_size): expected an integer, got 'abc'"]


def test_help_has_examples_and_defaults():
    result = run_script("train", "--help")
    assert result.returncode == 0
    assert "mpirun -n 8 python scripts/train.py --model mobilenet_v3_small" in result.stdout
    assert "--epoch_size VALUE" in result.stdout and "default 200" in result.stdout


FLOAT_KEYS = [name for name, spec in FIELDS.items() if spec.type is float]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", FLOAT_KEYS)
def test_every_float_key_refuses_non_finite_values(name, value):
    with pytest.raises(ConfigError) as err:
        from_command_line([f"--{name}={value}"])
    assert str(err.value) == f"{name} (from --{name}): must be a finite number, got '{value}'"


def test_non_finite_values_are_refused_in_yaml_and_lists_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_lr: .nan\n")
    with pytest.raises(ConfigError, match=rf"^max_lr \(from {path}\): must be a finite number, got nan$"):
        build_config(path)
    with pytest.raises(ConfigError, match=r"^learning_rates \(from --learning_rates\): every number must be finite"):
        from_command_line(["--learning_rates", "0.1 inf"])


def test_crop_pct_is_a_fraction_in_0_1():
    assert from_command_line(["--crop_pct", "1"]).crop_pct == 1.0
    with pytest.raises(ConfigError, match=r"^crop_pct \(from --crop_pct\): must be <= 1.0, got '5'$"):
        from_command_line(["--crop_pct", "5"])
    with pytest.raises(ConfigError, match=r"must be > 0.0"):
        from_command_line(["--crop_pct", "0"])


def test_a_yaml_file_that_is_not_utf8_is_one_line_naming_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("batch_size: 8  # café\n".encode("latin-1"))
    result = run_main("train", "--config", path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {path}: not UTF-8 text (byte 0xe9 at offset 20); save it as UTF-8"]


def test_cli_turns_ctrl_c_into_one_line_and_exit_130(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt
    try:
        run_cli(interrupted)
    except KeyboardInterrupt:  # not caught: fail this test rather than stop the whole session
        pytest.fail("run_cli let KeyboardInterrupt through")
    except SystemExit as stop:
        assert stop.code == 130 and capsys.readouterr().err == "\ninterrupted (Ctrl-C)\n"
    else:
        pytest.fail("run_cli returned")


def test_run_cli_prints_user_errors_and_lets_bugs_through(capsys):
    def mistake(argv):
        raise UserError("config file x.yaml not found")

    with pytest.raises(SystemExit) as stop:
        run_cli(mistake)
    assert stop.value.code == 2 and capsys.readouterr().err == "error: config file x.yaml not found\n"
    with pytest.raises(ZeroDivisionError):  # outside an MPI job, the exception itself, for the caller to see
        run_cli(lambda argv: 1 / 0)


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "rmsprop_tf", "--momentum", "1.5"], "momentum (from --momentum): must be < 1.0, got '1.5'"),
    (["--momentum", "1"], "momentum (from --momentum): must be < 1.0, got '1'"),
    (["--rand_augment", "rand-m9-m9"], "rand_augment 'rand-m9-m9' gives m twice; give each part once"),
    (["--bn_momentum", "1.5"], "bn_momentum (from --bn_momentum): must be <= 1.0, got '1.5'"),
    (["--ema_decay", "1"], "ema_decay (from --ema_decay): must be < 1.0, got '1'"),
    (["--smooth_factor", "1"], "smooth_factor (from --smooth_factor): must be < 1.0, got '1'"),
    (["--lr_decay_rate", "1.5"], "lr_decay_rate (from --lr_decay_rate): must be <= 1.0, got '1.5'"),
    (["--dropout_rate", "1"], "dropout_rate (from --dropout_rate): must be < 1.0, got '1'"),
    (["--random_erase", "1.5"], "random_erase (from --random_erase): must be <= 1.0, got '1.5'"),
    (["--min_crop_area", "2"], "min_crop_area (from --min_crop_area): must be <= 1.0, got '2'"),
    (["--min_lr", "0.5", "--max_lr", "0.1"],
     "min_lr 0.5 is above max_lr 0.1: the schedule decays from max_lr to min_lr"),
    (["--lr_decay_mode", "piecewise", "--milestone", "60,30", "--learning_rates", "0.1,0.01"],
     "milestone takes rising epochs above 0, got 60,30"),
    (["--lr_decay_mode", "piecewise", "--milestone", "30,60", "--learning_rates", "0.1,-0.01"],
     "learning_rates must all be > 0, got 0.1,-0.01"),
])
def test_values_no_recipe_can_mean_are_refused_in_one_line(argv, message):
    with pytest.raises(ConfigError) as raised:
        from_command_line(argv)
    assert str(raised.value) == message


@pytest.mark.parametrize("argv", [["--momentum", "0.999"], ["--bn_momentum", "1"], ["--ema_decay", "0.9999"],
                                  ["--lr_decay_rate", "1"], ["--random_erase", "1"], ["--min_lr", "0.1"]])
def test_the_bounds_themselves_are_accepted_where_they_mean_something(argv):
    assert from_command_line(argv)
