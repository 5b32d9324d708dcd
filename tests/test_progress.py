"""Progress bars: redrawn in place on a terminal, rarely in a log file."""

import io
import time

from ccua.progress import LOG_FILE_INTERVAL, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_a_redraw_at_most_every_30_seconds():
    log = io.StringIO()
    with progress_bar(range(40), file=log) as bar:
        for _ in bar:
            time.sleep(0.01)  # 0.4 s: tqdm's default 0.1 s interval would redraw several times
    assert bar.mininterval == LOG_FILE_INTERVAL == 30.0
    assert log.getvalue().count("\r") == 2, log.getvalue()  # the opening and the closing line


def test_a_terminal_keeps_tqdms_default_and_an_explicit_interval_wins():
    with progress_bar(total=1, file=_Terminal()) as bar:
        assert bar.mininterval == 0.1
    with progress_bar(total=1, file=io.StringIO(), mininterval=2.0) as bar:
        assert bar.mininterval == 2.0


def test_the_training_bar_in_a_log_file_is_not_redrawn_at_every_logged_loss(tmp_path, capsys):
    """The trainer shows the loss beside its bar; updating it must not force a redraw each time."""
    from ccua.config import config_from_dict
    from ccua.training.trainer import Trainer
    from tests.conftest import tiny_config_dict

    config = tiny_config_dict(tmp_path / "runs", method={"names": ["plain"]},
                              train={"steps": 12, "log_every": 1, "ckpt_every": 12, "progress": True})
    Trainer(config_from_dict(config), device="cpu").train()
    bar_lines = [part for part in capsys.readouterr().err.split("\r") if part.startswith("tiny:")]
    assert 1 <= len(bar_lines) <= 3, bar_lines  # the opening, the closing, at most one 30-s redraw
