"""The shared kernel's helpers: one_line (every error the CLI and the input adapters print) and
check_int (every integer argument check of the pipeline, the codecs and the format layer)."""
import numpy as np
import pytest

from slcodec._checks import check_int
from slcodec.cli import main
from slcodec.errors import ConfigError, InputError, one_line


def test_one_line_drops_terminal_codes_and_joins_lines():
    exc = InputError("bad\x1b[2J\x1b[31m file\nsecond\tline\r\x07")
    assert one_line(exc) == "bad file second line"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(ValueError("x" * 500), 160) == "x" * 157 + "..."
    assert one_line(ValueError("short"), 160) == "short"


def test_cli_error_for_a_hostile_file_name_is_one_clean_line(tmp_path, capsys):
    name = tmp_path / "evil\x1b[2J\nname.npy"
    name.write_bytes(b"not an npy file")
    rc = main(["encode", str(name), "-o", str(tmp_path / "o.vqsl"), "--codec", "fp16", "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "\x1b" not in err and err.startswith("slcodec: error:"), repr(err)


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(5)])
def test_check_int_accepts_integers_as_plain_int(value):
    got = check_int(value, "n")
    assert got == int(value) and type(got) is int


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "3", None, np.float32(2)])
def test_check_int_refuses_non_positive_and_non_integers(value):
    with pytest.raises(ConfigError, match=r"^n must be a positive integer, got "):
        check_int(value, "n")


def test_check_int_bounds_are_in_the_message():
    assert check_int(2, "classes", lo=2) == 2
    with pytest.raises(ConfigError, match=r"classes must be an integer >= 2, got 1"):
        check_int(1, "classes", lo=2)
    with pytest.raises(ConfigError, match=r"C must be an integer in 2 .. 10, got 11"):
        check_int(11, "C", 2, 10)
