"""The `leat-jax` command line: entry points, usage errors, `convert`'s one-line errors."""
from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys

import pytest

from leat_jax import cli
from tests.golden_harness import REPO


def _python(*args, timeout=300, env=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_python_m_leat_jax_runs_the_command():
    proc = _python("-m", "leat_jax", "immunize", "--help")
    assert proc.returncode == 0
    for flag in ("--victims", "--stand-in-weights", "--samples", "--eps", "--iterations", "--batch-size",
                 "--devices", "--format", "--force", "--quiet", "--distributed", "--config"):
        assert flag in proc.stdout
    assert _python("-m", "leat_jax", "--version").stdout.startswith("leat-jax ")


def test_immunize_keeps_torch_out_and_setup_errors_are_one_line(tmp_path):
    from PIL import Image

    (tmp_path / "src").mkdir()
    Image.new("RGB", (8, 8), (200, 100, 50)).save(tmp_path / "src" / "face.png")
    code = (
        "import sys; from leat_jax import cli; "
        f"bad = cli.main(['immunize', {str(tmp_path / 'nothing')!r}, {str(tmp_path / 'out')!r}, "
        "'--stand-in-weights']); "
        f"good = cli.main(['immunize', {str(tmp_path / 'src')!r}, {str(tmp_path / 'out')!r}, '--stand-in-weights', "
        "'--victims', 'toy_a', '--iterations', '1', '--quiet']); "
        "print('torch' in sys.modules, bad, good)"
    )
    proc = _python("-c", code, env={"LEAT_EXTRA_VICTIMS": "tests.pipeline_toys:victims"})
    assert proc.stdout.split() == ["False", "2", "0"], proc.stderr
    assert (tmp_path / "out" / "face.png").is_file()
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [f"leat-jax: error: {tmp_path / 'nothing'}: no such file or folder"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["immunize"], "SRC"),
        (["immunize", "only-dst"], "SRC and DST"),
        (["immunize", "--samples", "a", "b"], "DST only"),
        (["immunize", "a", "b", "--coordinator", "h:1"], "need --distributed"),
        (["immunize", "a", "b", "--batch-size", "0"], "at least 1"),
        (["immunize", "a", "b", "--format", "gif"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_workers_with_the_ray_engine_is_refused_from_a_flag_or_a_file(tmp_path, capsys):
    src, dst, config = str(tmp_path / "missing"), str(tmp_path / "out"), tmp_path / "run.toml"
    flag = "leat-jax: error: --workers: the Ray engine reads and writes in Ray tasks"
    in_file = f"leat-jax: error: {config}: workers: the Ray engine reads and writes in Ray tasks"
    for toml, extra, message in (
        ("", ["--engine", "ray", "--workers", "2"], flag),
        ("workers = 8\n", ["--engine", "ray"], in_file),
        ('workers = 8\nengine = "ray"\n', [], in_file),
        ("workers = 8\n", [], f"leat-jax: error: {src}: no such file or folder"),  # the in-process engine takes it
    ):
        config.write_text(toml)
        rc = cli.main(["immunize", src, dst, "--stand-in-weights", "--config", str(config), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_convert_errors_are_one_line(tmp_path):
    """Bad input exits 2, as every command's does."""
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Evil()))
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    cases = [
        (["nomodel", str(evil)], "no converter for 'nomodel'"),
        (["e4e", str(tmp_path / "missing.pt")], "no such file"),
        (["e4e", str(tmp_path / "notes.pt")], "not a readable PyTorch checkpoint"),
        (["e4e", str(evil)], "refused and nothing ran"),
    ]
    for (model, src), message in cases:
        proc = _python("-m", "leat_jax", "convert", model, src, str(tmp_path / "out"))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("leat-jax: error: ") and message in lines[0], proc.stderr
        assert "should-never-run" not in proc.stdout
        assert not (tmp_path / "out").exists()


def test_convert_exits_1_when_its_output_cannot_be_written_and_2_when_its_input_cannot_be_read(tmp_path, monkeypatch,
                                                                                               capsys):
    import converters

    src, dst = tmp_path / "e4e.pt", tmp_path / "weights" / "e4e"
    for where, code in ((f"{dst}.partial/params", 1), (str(src), 2)):  # DST's .partial folder, or SRC
        def failing(model, source, out, where=where):
            raise OSError(errno.EIO, "Input/output error", where)

        monkeypatch.setattr(converters, "convert", failing)
        assert cli.main(["convert", "e4e", str(src), str(dst)]) == code
        assert capsys.readouterr().err == f"leat-jax: error: {where}: Input/output error\n"


def test_convert_counts_only_dst_and_its_partial_folder_as_its_output(tmp_path):
    dst = tmp_path / "dst"
    assert cli.writing_to(str(dst), str(dst)) and cli.writing_to(str(tmp_path / "dst.partial" / "params"), str(dst))
    assert cli.writing_to(str(dst / "meta.json"), str(dst))
    assert not cli.writing_to(str(tmp_path / "dst2" / "x"), str(dst))  # a sibling sharing the prefix is input
    assert not cli.writing_to(str(tmp_path / "src.pt"), str(dst)) and not cli.writing_to(None, str(dst))
