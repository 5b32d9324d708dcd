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
