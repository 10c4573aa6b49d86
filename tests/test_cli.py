import subprocess
import sys
import time

from livo.cli import main


def test_help_lists_commands_and_starts_fast():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "livo.cli", "--help"], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    assert "usage: livo" in proc.stdout
    # no torch/diffusers/transformers at import time: the CLI must answer quickly
    assert elapsed < 8, f"livo --help took {elapsed:.1f}s"
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, livo.cli; livo.cli.build_parser(); "
         "print(','.join(m for m in ('torch', 'diffusers', 'transformers', 'deepspeed', 'kfp') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == ""


def test_unknown_command_exits_2(capsys):
    try:
        code = main(["definitely-not-a-command"])
    except SystemExit as exc:  # argparse exits on an invalid choice
        code = exc.code
    assert code == 2
