from opt_tpu_tui.launch import run

run()
