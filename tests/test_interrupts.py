"""held_sigint: a Ctrl-C inside the block is delivered as it ends, never in the middle."""

from __future__ import annotations

import signal
import threading

import pytest

from autotune.interrupts import held_sigint

pytestmark = pytest.mark.usefixtures("python_sigint")


def test_ctrl_c_inside_is_raised_after_the_block_completes():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held_sigint():
            signal.raise_signal(signal.SIGINT)
            done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_ctrl_c_no_interrupt():
    with held_sigint():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_error_leaving_the_block_is_not_hidden_by_a_held_ctrl_c():
    with pytest.raises(ValueError, match="boom"):
        with held_sigint():
            signal.raise_signal(signal.SIGINT)
            raise ValueError("boom")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_previous_handler_gets_the_held_signal():
    seen = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with held_sigint():
            signal.raise_signal(signal.SIGINT)
            assert seen == []
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, before)


def test_outside_the_main_thread_it_changes_nothing():
    errors = []

    def body():
        try:
            with held_sigint():
                pass
        except Exception as exc:  # noqa: BLE001 - reported to the main thread below
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert errors == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
