"""The commands' shared error handling (cltx.cli._ui.user_errors): interrupts end with the command's own hint."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import typer
from typer.testing import CliRunner

from cltx.cli._ui import user_errors


def _app(fn) -> typer.Typer:
    app = typer.Typer()
    app.command()(fn)
    app.command("noop")(lambda: None)  # two commands: typer keeps the command name
    return app


def test_ctrl_c_ends_with_the_commands_own_hint():
    @user_errors(on_interrupt="rerun with --resume to continue")
    def go():
        raise KeyboardInterrupt

    res = CliRunner().invoke(_app(go), ["go"])
    assert res.exit_code == 130
    assert "interrupted" in res.output and "rerun with --resume to continue" in res.output


def test_plain_decorator_hints_a_rerun_not_a_resume_flag():
    @user_errors
    def go():
        raise KeyboardInterrupt

    res = CliRunner().invoke(_app(go), ["go"])
    assert res.exit_code == 130
    assert "rerun the same command" in res.output and "--resume" not in res.output


def test_sigterm_ends_like_an_interrupt_and_the_handler_is_restored():
    code = textwrap.dedent(
        """
        import os, signal, sys, time
        import typer
        from cltx.cli._ui import user_errors

        app = typer.Typer()

        @app.command()
        @user_errors(on_interrupt="rerun with --resume to continue")
        def go():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

        @app.command()
        def other():
            pass

        try:
            app(["go"])
        except SystemExit as e:
            # after the command, SIGTERM has its default action again
            print("handler", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, file=sys.stderr)
            sys.exit(e.code)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 143, res.stderr
    assert "terminated" in res.stderr and "rerun with --resume to continue" in res.stderr
    assert "handler True" in res.stderr
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # this process's handler untouched
