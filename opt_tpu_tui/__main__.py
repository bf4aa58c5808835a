from opt_tpu_tui.cli import main

raise SystemExit(main())
