from bpfkit.cli import main

raise SystemExit(main())
