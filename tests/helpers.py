"""Shared test helpers: the CLI's user-error contract, checked in one place."""
import pathlib

from xnn.cli import main


def assert_one_line_stderr(err: str, *needles):
    """``err`` is exactly one line, ``xnn: error: ...``, with no traceback, holding every needle."""
    assert err.startswith("xnn: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def assert_one_line_error(capsys, argv, *needles, absent=()):
    """``main(argv)`` refuses with exit code 2 and one ``xnn: error:`` line holding every needle,
    and leaves none of the paths in ``absent`` behind.  Returns the line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert_one_line_stderr(err, *needles)
    for path in absent:
        assert not pathlib.Path(path).exists(), f"{path} was left behind"
    return err


def write_audio_only(path):
    """A file with one short silent AAC stream and no video (PyAV)."""
    import av
    import numpy
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=48000)
        af = av.AudioFrame.from_ndarray(numpy.zeros((1, 4800), numpy.float32), format="flt", layout="mono")
        af.sample_rate, af.pts = 48000, 0
        c.mux(a.encode(af))
        c.mux(a.encode())
    return path
