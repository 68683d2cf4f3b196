"""configs/: the documented default and its parameterised form, configs/cifar.py."""

import pytest

from configs import cifar
from configs import default
from wacnn_jax import cli
from wacnn_jax.nn import attention_spec
from wacnn_jax.training import config_checks




def test_no_argument_is_the_default():
  assert cifar.get_config().to_dict() == default.get_config().to_dict()
  assert cifar.get_config("").to_dict() == default.get_config().to_dict()


def test_settings_and_presets():
  config = cifar.get_config(
      "dataset=cifar100, arch=vgg16_bn,attention=wa(wavelet='db2', stages='all'),smoke")
  assert (config.data.dataset, config.model.arch) == ("cifar100", "vgg16_bn")
  assert attention_spec.AttentionSpec.parse(config.model.attention) == attention_spec.AttentionSpec(
      "wa", {"wavelet": "db2", "stages": "all"})
  assert (config.num_epochs, config.batch_size, config.data.max_train_examples) == (2, 64, 512)
  config_checks.validate_config(config)
  # Everything else is the default's.
  expected = default.get_config()
  cifar.smoke(expected)
  expected.data.dataset, expected.model.arch = "cifar100", "vgg16_bn"
  expected.model.attention = "wa(wavelet='db2', stages='all')"
  assert config.to_dict() == expected.to_dict()


def test_unknown_setting_names_the_choices():
  with pytest.raises(ValueError, match=r"unknown setting 'depth=3'.*dataset=\.\.\., "
                     r"arch=\.\.\., attention=\.\.\..*smoke"):
    cifar.get_config("depth=3")
  with pytest.raises(ValueError, match="unknown setting 'tiny'"):
    cifar.get_config("tiny")


def test_the_command_line_takes_the_argument(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["run_train.py", "train", "--config", "configs/cifar.py:depth=3",
              "--workdir", str(tmp_path)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "unknown setting 'depth=3'" in err
  assert "Traceback" not in err


def test_a_config_file_that_does_not_load_is_one_line(tmp_path, capsys):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n  pass\n")
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["run_train.py", "train", "--config", str(broken), "--workdir", str(tmp_path)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: --config {broken} does not load (SyntaxError: ")
  assert len(err.strip().splitlines()) == 1


def test_each_command_line_reads_its_own_config_file(tmp_path, capsys):
  """Two parses in one process (a notebook, the tests): the second file's code alone counts.

  ml_collections runs a config file inside the module an earlier parse left in
  sys.modules, so a file without get_config() used to borrow the earlier one's.
  """
  with pytest.raises(SystemExit):  # loads configs/cifar.py, then refuses the setting
    cli.main(["run_train.py", "train", "--config", "configs/cifar.py:depth=3",
              "--workdir", str(tmp_path)])
  capsys.readouterr()
  no_config = tmp_path / "no_config.py"
  no_config.write_text("x = 1\n")
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["run_train.py", "train", "--config", str(no_config), "--workdir", str(tmp_path)])
  assert exit_info.value.code == 2
  assert "defines no get_config()" in capsys.readouterr().err
