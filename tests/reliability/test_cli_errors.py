"""Issue 14: every user error of the command line is one line on stderr, exit status 2, no
traceback (``--debug`` shows it); config values are checked like the flags."""
import pytest
import torch

from activation_hash.cli import main
from helpers import cli_user_error

pytestmark = pytest.mark.usefixtures("keep_threads")  # --threads sets torch's threads


def user_error(argv, capsys) -> str:
    return cli_user_error(main, argv, capsys)


@pytest.mark.parametrize("args,msg", [
    (["train", "--threads", "-1"], r"--threads: must be an integer in [1, 4096], got -1"),
    (["train", "--threads", "0"], r"--threads: must be an integer in [1, 4096], got 0"),
    (["train", "--epochs", "-1"], r"--epochs: must be an integer >= 0, got -1"),
    (["train", "--width", "0"], r"--width: must be an integer >= 1, got 0"),
    (["train", "--lr", "-1"], r"--lr: must be a finite number in (0, inf), got -1.0"),
    (["train", "--dropout", "1.5"], r"--dropout: must be a finite number in [0, 1), got 1.5"),
    (["train", "--n-train", "100000", "--epochs", "1"], r"subset size must be an integer in [1, "),
    (["train", "--arch", "cnn", "--dataset", "moons", "--epochs", "1"],
     "convolutional models need image inputs"),
    (["train", "--dataset", "mnist", "--data-root", "/nonexistent", "--epochs", "1"],
     "mnist: missing IDX file(s)"),
    (["report", "/nonexistent/run"], "does not exist"),
    (["collisions", "/nonexistent/x.codes"], "no codes at '/nonexistent/x.codes'"),
    (["sweep", "--factor", "width", "--dataset", "moons"], "a factor is NAME=V1,V2,..."),
    (["sweep", "--factor", "width=", "--dataset", "moons"], "factor 'width' has no values"),
    (["sweep", "--factor", "width=2", "--seeds", "a,b"], "expected comma-separated numbers"),
    (["sweep", "--factor", "width=2", "--seeds", "1.5"], "--seeds must be comma-separated"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_one_line_exit_2(tmp_path, capsys, args, msg):
    err = user_error(args + ["--out", str(tmp_path / "o"), "-q"] if args[0] != "report"
                     else args, capsys)
    assert msg in err, err
    assert err.startswith(f"activation-hash {args[0]}: error: ")


def test_bad_stores_and_refused_models(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    assert "is not valid JSON" in user_error(["collisions", str(tmp_path / "s"), "--out",
                                              str(tmp_path / "o"), "-q"], capsys)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Evil()}, tmp_path / "model.pt")
    err = user_error(["extract", "--model", str(tmp_path / "model.pt"), "--out",
                      str(tmp_path / "e"), "-q"], capsys)
    assert "is refused: not a model.pt" in err and "pwned" not in capsys.readouterr().out


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError):
        main(["--debug", "train", "--arch", "cnn", "--dataset", "moons", "--epochs", "1",
              "--out", str(tmp_path / "o"), "-q"])


@pytest.mark.parametrize("toml,msg", [
    ('batch_norm = "false"\n', "option 'batch_norm' must be true or false, got str 'false'"),
    ("width = 3.7\n", "option 'width' must be an integer >= 1, got float 3.7"),
    ("width = true\n", "option 'width' must be an integer >= 1, got bool True"),
    ('lr = "fast"\n', "option 'lr' expected a number, got 'fast'"),
    ("threads = 0\n", "option 'threads' must be an integer in [1, 4096], got 0"),
    ('arch = "transformer"\n', "option 'arch' must be one of 'mlp', 'cnn', 'vgg', 'resnet'"),
])
def test_config_values_are_checked_like_flags(tmp_path, capsys, toml, msg):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    err = user_error(["train", "--config", str(cfg), "--out", str(tmp_path / "o"), "-q"], capsys)
    assert msg in err and str(cfg) in err, err


def test_required_options_may_come_from_the_config(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'model = "{tmp_path / "none"}"\n')
    err = user_error(["extract", "--config", str(cfg), "--out", str(tmp_path / "o"), "-q"],
                     capsys)
    assert "no trained model at" in err  # not "the following arguments are required"
    cfg.write_text(f'codes = ["{tmp_path / "x.codes"}"]\n')
    err = user_error(["collisions", "--config", str(cfg), "--out", str(tmp_path / "o"), "-q"],
                     capsys)
    assert "no codes at" in err
