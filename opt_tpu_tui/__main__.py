from opt_tpu_tui.cli import run

run()
